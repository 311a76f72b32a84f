"""`dr train`'s flags are its recipes' config fields: every field a flag, every flag a field, each with
its type, default and help from the field, and the flag's value reaching the config unchanged."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner

import dr_train.cli as cli
from dr_core.config_cli import flag_name
from dr_train.config import MidtrainConfig, RLRecipeConfig, SFTConfig

# fields no flag sets, and why: the command is the stage; the recipe derives bf16 from --precision
NOT_FLAGS = {"stage", "bf16"}


def params(command: str) -> dict[str, list[str]]:
    group = typer.main.get_command(cli.app)
    sub = group.commands[command]  # type: ignore[attr-defined]
    return {p.name: [*p.opts, *p.secondary_opts] for p in sub.params}


@pytest.mark.parametrize(
    ("command", "config"), [("midtrain", MidtrainConfig), ("sft", SFTConfig), ("rl", RLRecipeConfig)]
)
def test_every_config_field_is_a_flag_and_every_flag_a_field(command: str, config: type[BaseModel]):
    flags = params(command)
    assert set(flags) == set(config.model_fields) - NOT_FLAGS
    for name, field in config.model_fields.items():
        if name in NOT_FLAGS:
            assert flag_name(name, field) is None
        elif name != "inputs":  # the positional argument
            assert flag_name(name, field) in flags[name]
            assert field.description, f"{command} --{name} has no help"


def run_with(monkeypatch, *argv: str) -> dict:
    seen: dict = {}
    monkeypatch.setattr(cli, "_run", lambda recipe, flags: seen.update(recipe=recipe, flags=flags))
    result = CliRunner().invoke(cli.app, list(argv))
    assert result.exit_code == 0, result.output
    return seen


def test_flag_values_reach_the_config_fields_and_flags_not_given_are_none(monkeypatch):
    seen = run_with(monkeypatch, "sft", "a.jsonl", "--warmup", "5", "--no-grad-ckpt", "--long", "truncate",
                    "--betas", "0.9", "0.99", "-o", "out")  # fmt: skip
    flags = seen["flags"]
    assert seen["recipe"] == "sft" and flags["inputs"] == ["a.jsonl"]
    assert flags["warmup_steps"] == 5 and flags["grad_ckpt"] is False and flags["long"] == "truncate"
    assert flags["betas"] == (0.9, 0.99) and flags["out"] == "out"
    assert flags["lr"] is None and flags["precision"] is None  # the config file and defaults decide
    assert SFTConfig.model_validate({k: v for k, v in flags.items() if v is not None}).warmup_steps == 5
    rl = run_with(monkeypatch, "rl", "--train-flat-groups", "--reward", "judge", "--rollout-url", "a",
                  "--rollout-url", "b", "-G", "3")["flags"]  # fmt: skip
    assert rl["skip_flat_groups"] is False and rl["reward"] == "judge" and rl["group"] == 3
    assert rl["rollout_url"] == ["a", "b"]


def test_a_choice_outside_the_fields_literal_is_refused_with_the_choices():
    result = CliRunner().invoke(cli.app, ["rl", "--algo", "dpo"])
    assert result.exit_code == 2 and "grpo" in result.output and "ppo" in result.output


def test_help_shows_each_fields_default_and_loads_no_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from dr_train.cli import app; "
        "out = CliRunner().invoke(app, ['sft', '--help']).output; "
        "assert 'torch' not in sys.modules, 'torch loaded'; print(out)"
    )
    wide = {**os.environ, "COLUMNS": "300"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=wide
    )
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "(default: 1e-05)" in text and "(default: runs/sft)" in text and "(default: on)" in text
