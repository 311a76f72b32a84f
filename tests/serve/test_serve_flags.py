"""`dr serve`'s flags are its config's fields (ServeConfig: the engine's EngineSpec and the research API's
settings): every field a flag, every flag a field with its help, the values reaching the engine's command
line, and the config file's [serve] section applying where no flag is given."""

from __future__ import annotations

import json
import subprocess
import sys

import typer

from dr_core.config_cli import flag_name
from dr_serve.cli import app
from dr_serve.config import ServeConfig
from support.cli import DR

POSITIONAL = {"model", "extra"}


def test_every_config_field_is_a_flag_and_every_flag_a_field():
    command = typer.main.get_command(app)
    flags = {p.name: [*p.opts, *p.secondary_opts] for p in command.params}
    assert set(flags) == set(ServeConfig.model_fields)
    for name, field in ServeConfig.model_fields.items():
        assert field.description, f"--{name} has no help"
        if name not in POSITIONAL:
            assert flag_name(name, field) in flags[name]
    assert set(flags["tensor_parallel_size"]) == {"--tp", "--tensor-parallel-size"}
    assert set(flags["eager"]) == {"--eager", "--no-eager"}


def checkpoint(tmp_path):
    tmp_path.mkdir()
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "qwen2", "max_position_embeddings": 4096})
    )
    return tmp_path


def dry_run(*args, config=None):
    env = None
    if config is not None:
        import os

        env = {**os.environ, "DR_CONFIG": str(config)}
    return subprocess.run(
        [*DR, "serve", "--dry-run", *map(str, args)], capture_output=True, env=env, timeout=120
    )


def test_flags_and_the_config_files_serve_section_reach_the_engine_command(tmp_path):
    model = checkpoint(tmp_path / "m")
    result = dry_run(model, "--engine", "transformers", "--port", "8123", "--device", "cpu", "--", "--x", "1")
    assert result.returncode == 0, result.stderr
    line = result.stdout.decode()
    assert f"serve {model} --host 127.0.0.1 --port 8123 --device cpu" in line and line.strip().endswith(
        "--x 1"
    )
    config = tmp_path / "dr.toml"
    config.write_text('[serve]\nport = 8200\ndevice = "cpu"\n')
    from_file = dry_run(model, "--engine", "transformers", config=config)
    assert from_file.returncode == 0 and "--port 8200 --device cpu" in from_file.stdout.decode()
    flag_wins = dry_run(model, "--engine", "transformers", "--port", "8300", config=config)
    assert "--port 8300 --device cpu" in flag_wins.stdout.decode()


def test_python_m_dr_serve_is_the_same_command(tmp_path):
    model = checkpoint(tmp_path / "m")
    argv = [str(model), "--engine", "transformers", "--port", "8124", "--dry-run"]
    by_module = subprocess.run([sys.executable, "-m", "dr_serve", *argv], capture_output=True, timeout=120)
    by_dr = subprocess.run([*DR, "serve", *argv], capture_output=True, timeout=120)
    assert by_module.returncode == 0 and by_module.stdout == by_dr.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "dr_serve", "--engine", "none"], capture_output=True, timeout=120
    )
    assert bad.returncode == 2 and bad.stderr.decode().strip() == (
        "error: --engine none serves only the research API: give --api-port"
    )
