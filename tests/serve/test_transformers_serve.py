"""`dr serve` with transformers serve and a tiny random model: the agent survives garbage output."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dr_agent.agent import AgentConfig, ResearchAgent
from dr_agent.index import LocalIndex
from dr_agent.search import LocalBackend
from dr_core.llm import LLMClient, LLMConfig
from support.asgi import free_port, free_ports, wait_ok
from support.tiny_model import tiny_qwen2


def serve_command(model) -> list[str]:
    """`dr serve` of a tiny model with transformers serve on the CPU."""
    return [
        sys.executable,
        "-m",
        "dr_cli.main",
        "serve",
        str(model),
        "--engine",
        "transformers",
        "--device",
        "cpu",
    ]


KEY = "key-from-a-file-7731"


@pytest.fixture(scope="module")
def served(tmp_path_factory, drb_index):
    model = tiny_qwen2(tmp_path_factory.mktemp("tiny") / "tiny-qwen2")
    port, api_port = free_ports(2)
    cmd = serve_command(model)
    key_file = tmp_path_factory.mktemp("key") / "api-key"
    key_file.write_text(KEY + "\n")
    cmd += ["--port", str(port), "--api-port", str(api_port), "--index", str(drb_index)]
    cmd += ["--api-key-file", str(key_file)]
    # short generations: a random model rarely stops by itself
    env = {**os.environ, "DR_AGENT_MAX_OUTPUT_TOKENS": "48"}
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        wait_ok(f"http://127.0.0.1:{api_port}/health", proc)
        engine = f"http://127.0.0.1:{port}/v1"
        yield {"model": str(model), "engine": engine, "api": f"http://127.0.0.1:{api_port}", "log": log}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_agent_runs_against_a_random_model_without_crashing(served, drb_index):
    llm = LLMClient(LLMConfig(base_url=served["engine"], model=served["model"], max_retries=1, backoff_s=0.1))
    config = AgentConfig(max_steps=3, max_output_tokens=48, context_window=4096, temperature=0.7)
    trajectory = ResearchAgent(llm, LocalBackend(LocalIndex(drb_index)), None, config).run(
        "Who founded Velmora?"
    )
    assert trajectory.stop_reason in ("step_budget", "answered", "context_limit"), served["log"].read_text()[
        -3000:
    ]
    assert trajectory.steps >= 1 and trajectory.usage.completion_tokens > 0
    assert trajectory.messages[0].role == "system" and trajectory.messages[2].role == "assistant"


def test_the_research_api_beside_the_engine_answers_and_needs_the_key(served):
    assert httpx.post(f"{served['api']}/v1/research", json={"question": "q"}).status_code == 401
    response = httpx.post(
        f"{served['api']}/v1/research",
        json={"question": "Who founded Velmora?", "stream": False, "max_steps": 2},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=300,
    )
    # the key came from a file: no process of the machine shows it in its command line
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            assert KEY.encode() not in cmdline.read_bytes(), cmdline
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["status"] == "done", (run["error"], served["log"].read_text()[-4000:])
    assert run["trajectory"]["steps"] >= 1 and run["trajectory"]["model"] == served["model"]


def test_sigterm_stops_the_engine_and_the_api(tmp_path, drb_index):
    model = tiny_qwen2(tmp_path / "tiny")
    port = free_port()
    cmd = serve_command(model)
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ok(f"http://127.0.0.1:{port}/health", proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_the_engine_does_not_outlive_a_killed_dr_serve(tmp_path):
    """SIGKILL cannot be forwarded: the engine is tied to dr serve's life by the kernel instead."""
    model = tiny_qwen2(tmp_path / "tiny")
    port = free_port()
    cmd = serve_command(model)
    # a session of its own, so that an engine left behind by a failure here can still be cleaned up
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_ok(f"http://127.0.0.1:{port}/health", proc)
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            except httpx.HTTPError:
                return
            time.sleep(0.5)
        raise AssertionError("the engine still answers a minute after dr serve was killed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_transformers_serve_hands_a_malformed_tool_call_to_the_agent_as_text(tmp_path):
    """The server's own reply parser, on a tiny model's tokenizer: a tool call with a raw newline inside a
    JSON string comes back as content (the agent's parser then answers it with an error the model can
    correct); with Qwen2's fallback template the same reply fails the whole request."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.cli.serving.utils import parse_assistant_message

    from dr_agent.parse import parse_text_tool_calls

    folder = tiny_qwen2(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "q"}], add_generation_prompt=True)
    reply = 'Searching.\n<tool_call>\n{"name": "search", "arguments": {"queries": ["a\nb"]}}\n</tool_call>'
    generated = tokenizer(reply + "<|im_end|>", add_special_tokens=False)["input_ids"]
    content, _, calls = parse_assistant_message(tokenizer, model, generated, prompt)
    assert content == reply and calls is None
    parsed_calls, _, errors = parse_text_tool_calls(content)
    assert not parsed_calls and errors  # sent back to the model, not a server error

    tokenizer.response_template = None  # transformers' fallback for model_type qwen2
    with pytest.raises(ValueError, match="could not parse"):
        parse_assistant_message(tokenizer, model, generated, prompt)


def test_a_random_model_that_never_calls_a_tool_stops_with_no_progress(served, drb_index):
    llm = LLMClient(LLMConfig(base_url=served["engine"], model=served["model"], max_retries=1, backoff_s=0.1))
    config = AgentConfig(max_steps=20, max_output_tokens=24, context_window=8192, temperature=0.0)
    for mode in ("api", "text"):
        trajectory = ResearchAgent(llm, LocalBackend(LocalIndex(drb_index)), None, config.model_copy(
            update={"tool_mode": mode})).run("Who founded Velmora?")  # fmt: skip
        assert trajectory.meta["tool_mode"] == mode
        # nudged a few times, then stopped: not 20 steps of the same nothing
        assert trajectory.stop_reason == "no_progress" and trajectory.steps <= 6, (
            trajectory.stop_reason,
            [m.content for m in trajectory.messages if m.role == "assistant"],
        )
