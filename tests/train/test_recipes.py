"""dr-train's recipes as a Python API, from a config file, from [train.<recipe>] of the TOML settings, and
the engine layer under them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dr_core.config import resolve
from dr_core.errors import ConfigError
from dr_core.records import Example, Message
from dr_train.backend import DeepSpeedSettings, OptimSettings, PlainBackend, make_backend
from dr_train.recipes import recipe
from dr_train.recipes.common import read_config
from dr_train.recipes.sft import SFTConfig, run
from support.cli import DR

PACKAGES = Path(__file__).resolve().parents[2] / "packages"


def write_examples(path: Path, count: int = 12) -> Path:
    rows = []
    for i in range(count):
        example = Example(
            messages=[
                Message(role="user", content=f"What is {i} plus one?"),
                Message(role="assistant", content=f"It is {i + 1}."),
            ]
        )
        rows.append(example.to_json().decode())
    path.write_text("\n".join(rows) + "\n")
    return path


def test_sft_runs_from_python_with_a_config_and_returns_its_summary(tmp_path):
    data = write_examples(tmp_path / "sft.jsonl")
    config = SFTConfig(
        inputs=[str(data)], out=tmp_path / "run", max_len=128, max_steps=3, lr=1e-3, vocab_size=300
    )
    summary = run(config)
    assert summary is not None and summary.steps == 3 and summary.loss is not None
    assert (tmp_path / "run" / "config.json").is_file()  # a Hugging Face folder
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    # a finished run in the same folder is not trained again
    assert run(config.model_copy(update={"resume": True})) is None


def test_a_config_is_validated_once_with_the_flag_or_setting_named(tmp_path):
    with pytest.raises(ConfigError, match="--long"):
        read_config(SFTConfig, "sft", {"long": "sideways"})
    toml = tmp_path / "dr.toml"
    toml.write_text('[train.sft]\nmax_len = "long"\n')
    with pytest.raises(ConfigError, match=r"\[train.sft\] max_len"):
        resolve(SFTConfig, "train.sft", {}, file=toml)
    cls, _ = recipe("rl")
    assert cls.model_fields["algo"].default == "grpo"
    with pytest.raises(KeyError):
        recipe("dpo")


def test_the_train_section_of_the_config_file_sets_what_flags_leave_out(tmp_path):
    data = write_examples(tmp_path / "sft.jsonl")
    toml = tmp_path / "dr.toml"
    toml.write_text("[train.sft]\nmax_steps = 2\nmax_len = 128\nvocab_size = 300\nlr = 0.001\n")
    out = tmp_path / "run"
    result = subprocess.run(
        [*DR, "--config", str(toml), "train", "sft", str(data), "-o", str(out), "--max-steps", "1"],
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    summary = json.loads(result.stdout)
    assert summary["steps"] == 1  # the flag wins over the file
    out2 = tmp_path / "run2"
    result = subprocess.run(
        [*DR, "--config", str(toml), "train", "sft", str(data), "-o", str(out2)], capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert json.loads(result.stdout)["steps"] == 2  # the file's setting, where no flag is given


def test_python_m_dr_train_runs_a_recipe_from_its_config_file_and_refuses_a_bad_one(tmp_path):
    data = write_examples(tmp_path / "sft.jsonl")
    config = SFTConfig(inputs=[str(data)], out=tmp_path / "run", max_len=128, max_steps=1, vocab_size=300)
    path = tmp_path / "sft.json"
    path.write_text(config.model_dump_json())
    result = subprocess.run([sys.executable, "-m", "dr_train", "sft", str(path)], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert json.loads(result.stdout)["steps"] == 1
    path.write_text(json.dumps({"max_len": "many"}))
    bad = subprocess.run([sys.executable, "-m", "dr_train", "sft", str(path)], capture_output=True)
    assert bad.returncode == 2 and b"max_len" in bad.stderr and b"Traceback" not in bad.stderr


def test_the_plain_engine_clips_steps_and_saves_the_optimizer(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    engine = make_backend(
        model, OptimSettings(lr=0.1, clip=0.5), DeepSpeedSettings(), device=torch.device("cpu")
    )
    assert isinstance(engine, PlainBackend) and not engine.sharded and not engine.lockstep
    before = model.weight.detach().clone()
    engine.backward((model(torch.ones(2, 4)) * 100).sum())
    norm = engine.step()
    assert norm > 0.5  # the norm before clipping
    assert all(p.grad is None for p in model.parameters())  # zeroed for the next step
    assert not torch.equal(before, model.weight)
    engine.save(tmp_path)
    again = PlainBackend(torch.nn.Linear(4, 1), OptimSettings(lr=0.1), torch.device("cpu"))
    again.load(tmp_path)
    assert again.optimizer.state_dict()["state"].keys() == engine.optimizer.state_dict()["state"].keys()


def test_the_deepspeed_config_comes_from_typed_settings():
    optim = OptimSettings(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, clip=0.7)
    config = DeepSpeedSettings(zero=3, offload=True).config(optim, micro_steps=4, world=2, bf16=True)
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert config["optimizer"]["params"] == {"lr": 3e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}
    assert (
        config["train_batch_size"] == 8 and config["gradient_clipping"] == 0.7 and config["bf16"]["enabled"]
    )
    assert not DeepSpeedSettings().wanted and DeepSpeedSettings(zero=0).wanted


def test_nothing_below_the_cli_runs_the_top_level_command():
    offenders = [
        str(path.relative_to(PACKAGES)) for path in PACKAGES.rglob("*.py") if "dr_cli" in path.read_text()
    ]
    assert offenders == []


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_amx(monkeypatch):
    """AVX-512 BF16 without AMX multiplies bf16 slower than fp32 (docs/benchmarks.md): fp32 there."""
    from dr_train.recipes import common
    from dr_train.recipes.common import Precision, resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cases = [(True, False, "fp32"), (False, True, "bf16"), (True, True, "bf16"), (False, False, "fp32")]
    for avx512_bf16, amx, expected in cases:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert common.native_bf16() is (expected == "bf16")
        assert resolve_precision(Precision.auto) == Precision(expected)
        # an explicit choice is kept whatever the machine
        assert resolve_precision(Precision.fp32) == Precision.fp32
        assert resolve_precision(Precision.bf16) == Precision.bf16


def test_bf16_training_on_the_cpu_follows_fp32_losses_within_one_percent(tmp_path):
    """bf16 autocast over fp32 weights: over 6 steps at a high learning rate each step's loss stays within
    1% of the fp32 run's, and the saved weights are fp32 (the optimizer's master copy)."""
    data = write_examples(tmp_path / "sft.jsonl", count=24)
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        config = SFTConfig(
            inputs=[str(data)], out=out, max_len=128, max_steps=6, lr=1e-3, vocab_size=300,
            precision=precision,
        )  # fmt: skip
        summary = run(config)
        assert summary is not None
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[precision] = [m["loss"] for m in metrics]
        assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert losses["bf16"][-1] < losses["bf16"][0]  # it learns
    for fp32, bf16 in zip(losses["fp32"], losses["bf16"], strict=True):
        assert abs(bf16 - fp32) <= 0.01 * fp32, losses
    assert losses["bf16"] != losses["fp32"], losses  # bf16 did run: the low bits differ


def test_python_m_dr_train_help_exits_0_and_a_wrong_call_exits_2():
    helped = subprocess.run([sys.executable, "-m", "dr_train", "--help"], capture_output=True, timeout=120)
    assert helped.returncode == 0 and b"usage: python -m dr_train" in helped.stdout
    wrong = subprocess.run([sys.executable, "-m", "dr_train", "sft"], capture_output=True, timeout=120)
    assert wrong.returncode == 2 and b"usage: python -m dr_train" in wrong.stderr
