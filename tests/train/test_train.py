"""dr train midtrain / sft: the loss falls, packing is exact, resume is exact, checkpoints load, bad input is named."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from dr_core.records import Example, Message, ToolCall
from dr_train import copy_warmup as trainer_module
from dr_train.chat import IGNORE
from dr_train.copy_warmup import copy_drill, run_copy_warmup
from dr_train.data import build_dataset, item_texts, read_items
from dr_train.model import RopeSettings, build
from dr_train.tiny import CHAT_TEMPLATE
from dr_train.trainer import TrainConfig, Trainer, lr_at
from support.cli import DR

CITIES = ["Velmora", "Ostrand", "Quillby", "Harrowgate", "Tessaly", "Brindle", "Corvale", "Mirefold"]
FOUNDERS = [
    "Ada Quist",
    "Bo Lantern",
    "Cyd Marrow",
    "Dov Ember",
    "Eli Frost",
    "Fay Gorse",
    "Gus Hale",
    "Ivy Jorn",
]
TOOLS = [
    {"type": "function", "function": {"name": "search", "description": "s", "parameters": {"type": "object"}}}
]


def examples() -> list[Example]:
    out = []
    for i, (city, founder) in enumerate(zip(CITIES, FOUNDERS, strict=True)):
        call = ToolCall(id=f"c{i}", name="search", arguments={"queries": [f"{city} founder"]})
        out.append(
            Example(
                tools=TOOLS,
                messages=[
                    Message(role="system", content="You research."),
                    Message(role="user", content=f"Who founded {city}?"),
                    Message(role="assistant", content="Let me search.", tool_calls=[call]),
                    Message(role="tool", tool_call_id=f"c{i}", content=f"{city} was founded by {founder}."),
                    Message(role="assistant", content=f"Answer: {founder}"),
                ],
            )
        )
    return out


def write_jsonl(path: Path, records) -> Path:
    path.write_text(
        "".join(json.dumps(r if isinstance(r, dict) else r.model_dump(mode="json")) + "\n" for r in records)
    )
    return path


def dr(*args, input=None, timeout=300):
    return subprocess.run([*DR, *args], capture_output=True, input=input, timeout=timeout, env=os.environ)


def setup_run(tmp_path, stage="sft", max_len=512, **overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = write_jsonl(tmp_path / "data.jsonl", examples() * 2)
    items = read_items([str(source)], stage)
    model, tokenizer = build(
        "tiny:qwen2", None, lambda: item_texts(items, CHAT_TEMPLATE), RopeSettings(), seed=0, vocab_size=300
    )
    data = build_dataset(items, tokenizer, stage, max_len, "drop")
    config = TrainConfig(
        stage=stage, out=tmp_path / "run", max_len=max_len, lr=3e-3, warmup_steps=2, **overrides
    )
    return model, tokenizer, data, config


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_learning_rate_warms_up_then_decays_to_the_floor():
    config = TrainConfig(stage="sft", out=Path("x"), lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_at(s, 20, config) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(19, 20, config) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(15 / 16 * 3.14159265)).item()), abs=1e-6
    )
    assert lr_at(20, 20, config) == pytest.approx(0.1)


def test_sft_on_a_tiny_model_lowers_the_loss(tmp_path):
    model, tokenizer, data, config = setup_run(tmp_path, max_len=576, max_steps=30)
    losses = []
    Trainer(model, tokenizer, data, config, on_step=lambda step, record: losses.append(record["loss"])).run()
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3


def test_a_copy_drill_repeats_a_span_and_learns_only_the_repeat():
    import random

    for seed in range(50):
        drill = copy_drill(random.Random(seed), list(range(10, 60)))
        assert len(drill.input_ids) == len(drill.labels) == trainer_module.COPY_DOC
        learnt = [i for i, label in enumerate(drill.labels) if label != IGNORE]
        assert learnt == list(range(learnt[0], learnt[-1] + 1))  # one span
        assert all(drill.labels[i] == drill.input_ids[i] for i in learnt)
        # the repeat starts one token before the learnt span; that token and the rest stood earlier
        span = drill.input_ids[learnt[0] - 1 : learnt[-1] + 1]
        earlier = drill.input_ids[: learnt[0] - 1]
        assert any(earlier[i : i + len(span)] == span for i in range(len(earlier) - len(span) + 1))
        assert 7 <= len(learnt) < trainer_module.COPY_DOC // 3


def drilled(trainer: Trainer) -> None:
    """As the recipe runs a fresh model's training: the copy drills, then the loop."""
    trainer.run({"copy_warmup": run_copy_warmup(trainer)})


def test_the_copy_warmup_runs_before_training_and_ends_once_copies_are_right(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "COPY_DOCS", 4)  # a short test: 4 drills a step
    model, tokenizer, data, config = setup_run(tmp_path / "a", max_len=656, max_steps=3, copy_warmup=120)
    drilled(Trainer(model, tokenizer, data, config))
    log = [json.loads(line) for line in (config.out / "copy_warmup.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [50, 100, 120]  # a tiny model copies nothing yet: all 120 steps
    assert all(0 <= r["copy_accuracy"] < trainer_module.COPY_TARGET for r in log)
    assert [json.loads(line)["step"] for line in (config.out / "metrics.jsonl").read_text().splitlines()] == [
        1, 2, 3,
    ]  # fmt: skip
    state = json.loads((config.out / "trainer_state.json").read_text())
    assert state["summary"]["copy_warmup"]["steps"] == 120

    monkeypatch.setattr(trainer_module, "COPY_TARGET", 0.0)  # reached at the first check
    model, tokenizer, data, config = setup_run(tmp_path / "b", max_len=656, max_steps=1, copy_warmup=120)
    drilled(Trainer(model, tokenizer, data, config))
    log = [json.loads(line) for line in (config.out / "copy_warmup.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [50]


def test_kernels_and_plain_hugging_face_train_the_same_steps(tmp_path):
    runs = []
    for kernels in (True, False):
        model, tokenizer, data, config = setup_run(
            tmp_path / str(kernels), max_len=512, max_steps=3, kernels=kernels
        )
        losses: list[float] = []

        def on_step(step: int, record: dict, losses: list[float] = losses) -> None:
            losses.append(record["loss"])

        Trainer(model, tokenizer, data, config, on_step=on_step).run()
        runs.append((losses, state_of(model)))
    (fused, fused_state), (plain, plain_state) = runs
    assert fused == pytest.approx(plain, rel=1e-4)
    for name, value in fused_state.items():
        # Adam divides by the gradient size, so fp32 rounding moves a weight by up to about lr·1e-2
        torch.testing.assert_close(value, plain_state[name], rtol=1e-3, atol=1e-4)


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_weights(tmp_path):
    model, tokenizer, data, config = setup_run(tmp_path / "whole", max_len=576, max_steps=7, save_every=3)
    Trainer(model, tokenizer, data, config).run()
    uninterrupted = state_of(model)

    class Killed(Exception):
        pass

    def kill_at_five(step, record):
        if step == 5:
            raise Killed

    model, tokenizer, data, config = setup_run(tmp_path / "killed", max_len=576, max_steps=7, save_every=3)
    with pytest.raises(Killed):
        Trainer(model, tokenizer, data, config, on_step=kill_at_five).run()
    from dr_train import checkpoint

    resume_from = checkpoint.latest(config.out)
    assert resume_from is not None and resume_from.name == "checkpoint-3"
    # a fresh process's view: weights, tokenizer and state all from the checkpoint folder
    model, tokenizer = build(str(resume_from), None, list, RopeSettings(), seed=0)
    Trainer(model, tokenizer, data, config, resume_from=resume_from).run()
    for name, value in uninterrupted.items():
        assert torch.equal(value, model.state_dict()[name]), name
    steps = [json.loads(line)["step"] for line in (config.out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))  # the lines of the lost steps 4-5 were replaced, not repeated


def tiny_sft(source, out, steps, *flags, timeout=300):
    """`dr train sft` of a tiny model (a 300-token vocabulary learnt from the data) on rows of 512 tokens."""
    return dr(
        "train", "sft", str(source), "-o", str(out), "--max-len", "512", "--max-steps", str(steps),
        "--vocab-size", "300", *flags, timeout=timeout,
    )  # fmt: skip


def test_sft_through_the_cli_writes_a_checkpoint_transformers_loads_with_its_rope_scaling(tmp_path):
    source = write_jsonl(tmp_path / "data.jsonl", examples())
    out = tmp_path / "run"
    result = tiny_sft(source, out, 2, "--rope-scaling", "yarn:4")
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and summary["out"] == str(out)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "tokens_per_s", "memory_gib", "mfu", "grad_norm"} <= set(metrics[-1])
    # on the CPU also what the process holds between steps, which the peak cannot show growing
    assert all(0.05 < m["rss_gib"] <= m["memory_gib"] for m in metrics)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(out)
    assert config.rope_parameters["rope_type"] == "yarn" and config.rope_parameters["factor"] == 4.0
    assert config.max_position_embeddings == 4 * 32768
    model: Any = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config._attn_implementation != "dr_packed"  # the server loads plain attention
    ids: Any = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who founded Velmora?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids["input_ids"].shape[1]
    again = dr("train", "sft", str(source), "-o", str(out))
    assert again.returncode == 2 and b"already holds a run" in again.stderr
    same = ["--max-len", "512", "--max-steps", "2", "--vocab-size", "300", "--rope-scaling", "yarn:4"]
    done = dr("train", "sft", str(source), "-o", str(out), *same, "--resume")
    assert done.returncode == 0 and b"finished run" in done.stderr
    # asked for with other settings, the finished run is refused, not passed off as what was asked
    changed = dr("train", "sft", str(source), "-o", str(out), "--resume")
    assert changed.returncode == 2 and b"max_len 512 then, 32768 now" in changed.stderr


def test_sft_reads_stdin_and_midtrain_splits_long_documents(tmp_path):
    docs = [{"id": f"d{i}", "text": " ".join(CITIES * (i + 1))} for i in range(6)]
    out = tmp_path / "mid"
    result = dr(
        "train",
        "midtrain",
        "-o",
        str(out),
        "--max-len",
        "64",
        "--max-steps",
        "2",
        "--vocab-size",
        "300",
        input="".join(json.dumps(d) + "\n" for d in docs).encode(),
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    summary = json.loads(result.stdout)
    assert summary["pack"]["split"] >= 1 and summary["pack"]["dropped"] == 0


def test_bad_input_gets_a_clear_message(tmp_path):
    no_assistant = write_jsonl(tmp_path / "a.jsonl", [Example(messages=[Message(role="user", content="hi")])])
    result = dr("train", "sft", str(no_assistant), "-o", str(tmp_path / "r1"))
    assert result.returncode == 2
    assert b"a.jsonl:1" in result.stderr and b"no assistant turn" in result.stderr
    assert b"Traceback" not in result.stderr

    long = write_jsonl(tmp_path / "b.jsonl", examples()[:2])
    result = dr(
        "train",
        "sft",
        str(long),
        "-o",
        str(tmp_path / "r2"),
        "--max-len",
        "16",
        "--long",
        "error",
        "--vocab-size",
        "300",
    )
    assert result.returncode == 2 and b"over the 16-token row budget" in result.stderr

    result = dr(
        "train", "sft", str(long), "-o", str(tmp_path / "r3"), "--max-len", "16", "--vocab-size", "300"
    )
    assert result.returncode == 2 and b"nothing left to train on" in result.stderr

    result = dr(
        "train", "sft", str(long), "-o", str(tmp_path / "r4"), "--tokenizer", str(tmp_path / "nowhere")
    )
    assert (
        result.returncode == 2
        and b"could not be loaded" in result.stderr
        and b"Traceback" not in result.stderr
    )

    result = dr("train", "sft", str(long), "-o", str(tmp_path / "r5"), "--model", "gpt-17")
    assert result.returncode == 2 and b"nothing is downloaded" in result.stderr

    result = dr("train", "sft", str(long), "-o", str(tmp_path / "r6"), "--rope-scaling", "yarn")
    assert result.returncode == 2 and b"TYPE:FACTOR" in result.stderr


def test_on_error_skip_trains_on_the_good_lines_and_keeps_the_bad_ones(tmp_path):
    source = tmp_path / "mixed.jsonl"
    write_jsonl(source, examples())
    with source.open("a") as fh:
        fh.write("{not json\n")
    rejects = tmp_path / "rejects.jsonl"
    result = dr(
        "train",
        "sft",
        str(source),
        "-o",
        str(tmp_path / "run"),
        "--max-len",
        "512",
        "--max-steps",
        "1",
        "--vocab-size",
        "300",
        "--on-error",
        "skip",
        "--rejects",
        str(rejects),
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    [reject] = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert reject["line"] == len(examples()) + 1


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["2", "3"])
def test_deepspeed_zero_on_two_cpu_processes_trains_and_saves_a_loadable_checkpoint(tmp_path, zero):
    pytest.importorskip("deepspeed")
    source = write_jsonl(tmp_path / "data.jsonl", examples() * 2)
    out = tmp_path / "run"
    result = tiny_sft(
        source,
        out,
        3,
        "--nproc",
        "2",
        "--zero",
        zero,
        "--lr",
        "3e-3",
        "--save-every",
        "2",
        "--tokens-per-step",
        "2048",  # two rows per rank per step: DeepSpeed accumulates, then one update
        timeout=600,
    )
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    summary = json.loads(result.stdout)  # one summary: only the first rank writes data
    assert summary["steps"] == 3
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    # four rows of several examples each step; `tokens` is the step's, `tokens_seen` the run's so far
    assert metrics[-1]["tokens_seen"] > 3 * 4 * 300
    assert metrics[-1]["tokens_seen"] == sum(m["tokens"] for m in metrics)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.num_parameters() > 0 and (out / "checkpoint-2" / "model.safetensors").is_file()
    trained = model.state_dict()["model.layers.0.mlp.up_proj.weight"]
    first = AutoModelForCausalLM.from_pretrained(out / "checkpoint-2").state_dict()[
        "model.layers.0.mlp.up_proj.weight"
    ]
    assert not torch.equal(trained.float(), first.float())  # the third step moved the weights


@pytest.mark.slow
def test_ulysses_sequence_parallel_on_two_processes_trains_as_one_process_does(tmp_path):
    """--sp 2: each rank holds half of every row (padded to an even length), attention gathers the whole
    sequence for half of the heads; the losses and the trained weights are those of one process."""
    pytest.importorskip("deepspeed")
    source = write_jsonl(tmp_path / "data.jsonl", examples() * 2)
    # fp32: the comparison is to fp32 rounding (auto is bf16 on a CPU with AMX, where one process
    # autocasts and DeepSpeed's bf16 casts the weights)
    common = ["--max-len", "1001", "--max-steps", "3", "--vocab-size", "300", "--lr", "3e-3", "--seed", "1",
              "--precision", "fp32"]  # fmt: skip
    runs = {}
    for name, extra in {"one": [], "sp": ["--nproc", "2", "--sp", "2", "--zero", "0"]}.items():
        out = tmp_path / name
        result = dr("train", "sft", str(source), "-o", str(out), *common, *extra, timeout=600)
        assert result.returncode == 0, result.stderr.decode()[-4000:]
        runs[name] = out
    metrics = {
        name: [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        for name, out in runs.items()
    }
    losses = {name: [m["loss"] for m in rows] for name, rows in metrics.items()}
    assert len(losses["one"]) == 3
    assert losses["sp"] == pytest.approx(losses["one"], rel=1e-4)
    from safetensors.torch import load_file

    one, sp = (load_file(runs[name] / "model.safetensors") for name in ("one", "sp"))
    assert one.keys() == sp.keys()
    for key in one:
        torch.testing.assert_close(sp[key], one[key], rtol=1e-4, atol=1e-5)
    assert [m["tokens_seen"] for m in metrics["sp"]] == [m["tokens_seen"] for m in metrics["one"]]


def processes_naming(marker: str) -> list[int]:
    """Live processes whose command line contains `marker` (zombies have none)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:  # gone meanwhile
                pass
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tie is Linux's PR_SET_PDEATHSIG")
def test_the_ranks_do_not_outlive_a_killed_dr_train(tmp_path):
    """`dr train --nproc 2` killed outright (SIGKILL) takes its launcher and both ranks with it, rather than
    leaving them training (and holding the rendezvous port) behind."""
    pytest.importorskip("deepspeed")
    source = write_jsonl(tmp_path / "data.jsonl", examples() * 2)
    out = tmp_path / "killed-run"
    command = [*DR, "train", "sft", str(source), "-o", str(out), "--max-len", "512", "--max-steps", "100000",
               "--vocab-size", "300", "--nproc", "2", "--zero", "0"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "the ranks never trained a step"
            time.sleep(0.5)
        # dr, the launcher and both ranks name the output folder on their command lines
        assert len(processes_naming(str(out))) == 4
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 90
        while processes_naming(str(out)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert processes_naming(str(out)) == []
    finally:
        for pid in processes_naming(str(out)):
            os.kill(pid, signal.SIGKILL)


def test_resume_refuses_changed_settings_and_drops_a_torn_metrics_line(tmp_path):
    source = write_jsonl(tmp_path / "data.jsonl", examples())
    out = tmp_path / "run"
    base = ["train", "sft", str(source), "-o", str(out), "--max-len", "512", "--vocab-size", "300"]
    first = dr(*base, "--max-steps", "2", "--save-every", "1", "--lr", "1e-3")
    assert first.returncode == 0, first.stderr.decode()[-3000:]
    # as if killed after checkpoint-1: the final model and its checkpoint-2 are not there
    for name in ("trainer_state.json", "model.safetensors"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "checkpoint-2", ignore_errors=True)
    for flag, value, shown in (("--lr", "5e-2", "lr 0.001 then, 0.05 now"), ("--max-steps", "3", "max_steps 2 then, 3 now"),
                               ("--warmup", "1", "warmup_steps 0 then, 1 now"), ("--clip", "0.5", "clip 1.0 then, 0.5 now")):  # fmt: skip
        args = {"--max-steps": "2", "--lr": "1e-3", flag: value}
        changed = dr(*base, *[x for kv in args.items() for x in kv], "--resume")
        assert changed.returncode == 2, changed.stderr.decode()[-2000:]
        assert shown.encode() in changed.stderr and b"Traceback" not in changed.stderr
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 2, "loss": 1.')  # the disk filled up mid-line
    same = dr(*base, "--max-steps", "2", "--save-every", "1", "--lr", "1e-3", "--resume")
    assert same.returncode == 0, same.stderr.decode()[-3000:]
    assert b"a torn metrics line, dropped" in same.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 2
