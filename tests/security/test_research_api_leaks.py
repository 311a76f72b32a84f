"""The research API runs nothing it refused, and never passes a credential or an upstream error body on
to its clients."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from dr_agent.agent import ResearchAgent
from dr_agent.index import LocalIndex
from dr_agent.search import LocalBackend
from dr_core.llm import LLMClient, LLMConfig
from dr_core.log import scrub, strip_userinfo
from dr_serve.api import ApiConfig, create_app
from support.asgi import serving
from support.openai_server import Reply, scripted_server
from support.policies import call


@pytest.fixture
def agent_factory(drb_index):
    def make(url):
        llm = LLMClient(LLMConfig(base_url=url, model="m", backoff_s=0.01, max_retries=0))
        return ResearchAgent(llm, LocalBackend(LocalIndex(drb_index)))

    return make


def test_a_request_refused_with_413_runs_nothing(agent_factory, tmp_path):
    """A chunked body whose first chunk is whole, valid JSON, followed by 1.2 MB of spaces."""
    runs = tmp_path / "runs"
    with scripted_server([Reply(content=None, tool_calls=[call("answer", text="ran")])]) as llm:
        app = create_app(agent_factory(llm.url), ApiConfig(runs_dir=runs, max_request_bytes=1_000_000))

        def body():
            yield json.dumps({"question": "q"}).encode()
            time.sleep(0.5)  # the server has the first chunk, whole JSON, on its own
            for _ in range(12):
                yield b" " * 100_000
                time.sleep(0.02)

        with serving(app) as url:
            json_type = {"content-type": "application/json"}
            refused = httpx.post(f"{url}/v1/research", content=body(), headers=json_type, timeout=30)
            assert refused.status_code == 413
            # a whole body under the limit still runs
            ok = httpx.post(f"{url}/v1/research", json={"question": "q", "stream": False}, timeout=30)
            assert ok.status_code == 200 and ok.json()["trajectory"]["final"] == "ran"
    assert len(llm.requests) == 1  # only the accepted request reached the model
    assert len(list(runs.glob("*.json"))) == 1


def test_credentials_in_the_model_url_never_reach_a_client(drb_index):
    with scripted_server([Reply(status=401, error_body='{"error": {"message": "bad credentials"}}')]) as llm:
        host = llm.url.split("://", 1)[1]
        agent = ResearchAgent(
            LLMClient(LLMConfig(base_url=f"http://admin:pw@{host}", model="m", max_retries=0)),
            LocalBackend(LocalIndex(drb_index)),
        )
        with serving(create_app(agent)) as url:
            body = httpx.post(f"{url}/v1/research", json={"question": "q", "stream": False}, timeout=30)
    text = body.text
    assert body.json()["status"] == "failed" and "HTTP 401" in body.json()["error"]
    assert "admin" not in text and ":pw" not in text


def test_upstream_error_bodies_are_summarized_and_scrubbed(agent_factory):
    upstream = (
        "Traceback (most recent call last):\n"
        '  File "/srv/app.py", line 12, in handler\n'
        "    db = connect('postgres://svc:hunter2@db.internal:5432/prod')\n"
        "RuntimeError: engine crashed\n" + "x" * 5000
    )
    with scripted_server([Reply(status=500, error_body=upstream)]) as llm:
        with serving(create_app(agent_factory(llm.url))) as url:
            body = httpx.post(f"{url}/v1/research", json={"question": "q", "stream": False}, timeout=30)
    error = body.json()["error"]
    assert "HTTP 500" in error and "hunter2" not in body.text and "postgres://svc" not in body.text
    assert "File " not in error and len(error) < 400  # a status and a short reason, not the traceback


def test_the_reason_an_openai_style_error_gives_is_kept():
    with scripted_server(
        [Reply(status=400, error_body='{"error": {"message": "max_tokens must be at least 1\\nmore"}}')]
    ) as llm:
        client = LLMClient(LLMConfig(base_url=llm.url, model="m", max_retries=0))
        with pytest.raises(Exception, match=r"HTTP 400: max_tokens must be at least 1$"):
            client.chat([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("http://admin:pw@host:8000/v1", "admin:pw"),
        ("see postgres://u:secret-pw@db/x for details", "secret-pw"),
        ("redis://:onlypass@cache:6379", "onlypass"),
        ("HTTPS://USER:PASS@EXAMPLE.COM/", "PASS"),
    ],
)
def test_userinfo_is_stripped_from_every_url(text, hidden):
    assert hidden not in scrub(text) and hidden not in strip_userinfo(text)
    assert "://" in scrub(text)
