"""The agent against a real OpenAI-compatible server (`transformers serve`, through `dr serve`), with a
tiny model that learnt two world tasks' oracle trajectories: which tool path it takes, and how runs stop.

The scripted server covers the agent loop's unit tests (tests/agent/test_agent.py); here the requests go
through a real chat template, a real generation and a real server's reading of the conversation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from dr_agent.agent import AgentConfig, ResearchAgent
from dr_agent.index import LocalIndex
from dr_agent.search import LocalBackend
from dr_core.llm import LLMClient, LLMConfig
from dr_core.records import Task, Trajectory
from support import must
from support.asgi import free_port, wait_ok
from support.cli import DR
from support.taught import taught_world


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """Two 1-hop world tasks, their index, and a tiny model that learnt their oracle trajectories by heart,
    served by `dr serve --engine transformers` on the CPU."""
    root = tmp_path_factory.mktemp("real")
    tasks = taught_world(root)
    port = free_port()
    cmd = [
        *DR,
        "serve",
        str(root / "sft"),
        "--engine",
        "transformers",
        "--device",
        "cpu",
        "--port",
        str(port),
    ]
    log = root / "serve.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ok(f"http://127.0.0.1:{port}/health", proc)
        yield {
            "url": f"http://127.0.0.1:{port}/v1",
            "model": str(root / "sft"),
            "index": root / "index",
            "tasks": [Task.model_validate_json(line) for line in tasks.read_text().splitlines()],
            "log": log,
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def run(taught, task: Task, **config) -> Trajectory:
    llm = LLMClient(LLMConfig(base_url=taught["url"], model=taught["model"], max_retries=1, backoff_s=0.1))
    settings = {"max_steps": 8, "max_output_tokens": 256, "top_k": 5, "temperature": 0.0, **config}
    return ResearchAgent(llm, LocalBackend(LocalIndex(taught["index"])), None, AgentConfig(**settings)).run(
        task.question, task_id=task.id
    )


def test_text_tool_calls_give_the_model_what_it_learnt_and_it_answers(taught):
    """In text mode the server renders exactly the tokens the model was trained on (the tiny template and
    dr_core.tool_text agree), so the model repeats its teacher: every step a tool call, then the answer."""
    for task in taught["tasks"]:
        trajectory = run(taught, task, tool_mode="text")
        assert trajectory.meta["tool_mode"] == "text"
        assert trajectory.stop_reason == "answered", (
            trajectory.stop_reason,
            taught["log"].read_text()[-2000:],
        )
        assert trajectory.meta["tool_calls"] >= 4 and trajectory.meta["tool_errors"] == 0
        assert task.answer in must(trajectory.final)


def test_through_the_tools_api_transformers_serve_rewrites_the_history(taught):
    """Through the tools API the first step is the teacher's (plan and search, read by the agent from the
    model's text), but transformers serve drops the content of assistant turns that call tools and
    re-serializes their arguments, so from the second step the model reads a history it never saw, and
    the run ends on a budget, not an error. This is why the main job benches with --tool-mode text."""
    for task in taught["tasks"]:
        trajectory = run(taught, task, tool_mode="api")
        assert trajectory.meta["tool_mode"] == "api"
        first = next(m for m in trajectory.messages if m.role == "assistant")
        assert [c.name for c in first.tool_calls] == ["plan", "search"]
        assert trajectory.stop_reason in ("step_budget", "no_progress", "answered"), trajectory.meta
        assert "error" not in trajectory.meta


def test_auto_mode_stays_on_the_api_with_a_server_that_takes_tools(taught):
    trajectory = run(taught, taught["tasks"][0], max_steps=2)
    assert trajectory.meta["tool_mode"] == "api" and "error" not in trajectory.meta


def test_research_cli_runs_the_tasks_in_text_mode_and_reports_the_stops(taught, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(t.to_json().decode() + "\n" for t in taught["tasks"]))
    out = tmp_path / "runs.jsonl"
    result = subprocess.run(
        [*DR, "research", "--tasks", str(tasks), "-o", str(out), "--base-url", taught["url"], "--model",
         taught["model"], "--index", str(taught["index"]), "--no-web", "--max-steps", "8", "--temperature", "0",
         "--tool-mode", "text"],
        capture_output=True, timeout=600, env={**os.environ, "DR_AGENT_MAX_OUTPUT_TOKENS": "256"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    runs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["stop_reason"] for r in runs] == ["answered", "answered"]
    assert all(r["meta"]["tool_mode"] == "text" for r in runs)
