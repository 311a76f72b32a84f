"""The research API with real HTTP clients: streaming events, fetching runs, auth, concurrency."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from dr_agent.agent import ResearchAgent
from dr_agent.index import LocalIndex
from dr_agent.search import LocalBackend
from dr_core.llm import LLMClient, LLMConfig
from dr_serve.api import ApiConfig, create_app
from support import must
from support.asgi import serving
from support.openai_server import Reply, scripted_server
from support.policies import call, researcher


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    name = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


@pytest.fixture
def agent_factory(drb_index):
    def make(url):
        llm = LLMClient(LLMConfig(base_url=url, model="m", backoff_s=0.01))
        return ResearchAgent(llm, LocalBackend(LocalIndex(drb_index)))

    return make


def test_post_streams_events_then_the_report_and_the_run_can_be_fetched(agent_factory, tmp_path):
    with scripted_server(researcher("人工智能 教育")) as llm:
        app = create_app(agent_factory(llm.url), ApiConfig(runs_dir=tmp_path / "runs"))
        with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            with client.stream("POST", "/v1/research", json={"question": "AI in education?"}) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                events = sse_events(response)
            names = [name for name, _ in events]
            assert names[0] == "run" and names[1] == "start" and names[-2:] == ["end", "report"]
            assert names.count("step") == 4
            run_id = events[0][1]["run_id"]
            report = events[-1][1]
            assert report["final"] == "The answer is in \\cite{21}." and report["error"] is None
            run = client.get(f"/v1/runs/{run_id}").json()
            assert run["status"] == "done" and run["trajectory"]["final"] == report["final"]
            assert run["trajectory"]["id"] == report["trajectory_id"]
            assert client.get("/v1/runs/nope").status_code == 404
    # finished runs are on disk too
    assert json.loads((tmp_path / "runs" / f"{run_id}.json").read_text())["status"] == "done"


def test_non_streaming_post_returns_the_finished_run(agent_factory):
    with scripted_server([Reply(content=None, tool_calls=[call("answer", text="42")])]) as llm:
        with serving(create_app(agent_factory(llm.url))) as url:
            body = httpx.post(
                f"{url}/v1/research", json={"question": "q", "stream": False}, timeout=30
            ).json()
    assert body["status"] == "done" and body["trajectory"]["final"] == "42"


def test_bearer_token_is_required_when_configured(agent_factory):
    with scripted_server([Reply(content=None, tool_calls=[call("answer", text="42")])]) as llm:
        with serving(create_app(agent_factory(llm.url), ApiConfig(api_key="s3cret"))) as url:
            payload = {"question": "q", "stream": False}
            assert httpx.get(f"{url}/health").status_code == 200
            missing = httpx.post(f"{url}/v1/research", json=payload)
            wrong = httpx.post(f"{url}/v1/research", json=payload, headers={"Authorization": "Bearer nope"})
            assert missing.status_code == wrong.status_code == 401
            assert missing.headers["www-authenticate"] == "Bearer"
            assert httpx.get(f"{url}/v1/runs/x").status_code == 401
            ok = httpx.post(
                f"{url}/v1/research", json=payload, headers={"Authorization": "Bearer s3cret"}, timeout=30
            )
            assert ok.status_code == 200 and ok.json()["trajectory"]["final"] == "42"


def test_beyond_the_concurrency_limit_requests_get_429(agent_factory):
    release = threading.Event()

    def slow(body):
        release.wait(10)
        return Reply(content=None, tool_calls=[call("answer", text="done")])

    with scripted_server(slow) as llm:
        with serving(create_app(agent_factory(llm.url), ApiConfig(max_concurrent=1))) as url:
            with httpx.Client(base_url=url, timeout=30) as client:
                with client.stream("POST", "/v1/research", json={"question": "first"}) as first:
                    assert first.status_code == 200
                    busy = client.post("/v1/research", json={"question": "second"})
                    assert busy.status_code == 429 and busy.headers["retry-after"] == "5"
                    assert "limit 1" in busy.json()["error"]
                    release.set()
                    assert sse_events(first)[-1][1]["final"] == "done"
                again = client.post("/v1/research", json={"question": "third", "stream": False})
                assert again.status_code == 200


def test_bad_requests_are_rejected_with_422(agent_factory):
    with scripted_server([Reply()]) as llm:
        with serving(create_app(agent_factory(llm.url))) as url:
            assert httpx.post(f"{url}/v1/research", json={"question": ""}).status_code == 422
            assert httpx.post(f"{url}/v1/research", content=b"not json").status_code == 422


def test_a_client_cannot_raise_the_servers_step_budget(agent_factory, drb_index):
    # the model never answers: the run ends at the budget, the server's 3, not the client's 10^12
    with scripted_server(lambda body: Reply(content=None, tool_calls=[call("search", queries=["x"])])) as llm:
        agent = agent_factory(llm.url)
        agent = ResearchAgent(
            agent.llm, agent.backend, config=agent.config.model_copy(update={"max_steps": 3})
        )
        with serving(create_app(agent)) as url:
            body = httpx.post(
                f"{url}/v1/research",
                json={"question": "q", "stream": False, "max_steps": 1_000_000_000_000},
                timeout=60,
            ).json()
            fewer = httpx.post(
                f"{url}/v1/research", json={"question": "q", "stream": False, "max_steps": 1}, timeout=60
            ).json()
    assert body["trajectory"]["steps"] == 3 and body["trajectory"]["stop_reason"] == "step_budget"
    assert fewer["trajectory"]["steps"] == 1


def test_request_bodies_over_the_limit_get_413_before_they_are_read(agent_factory):
    with scripted_server([Reply(content=None, tool_calls=[call("answer", text="42")])]) as llm:
        app = create_app(agent_factory(llm.url), ApiConfig(max_request_bytes=10_000))
        with serving(app) as url:
            big = httpx.post(f"{url}/v1/research", json={"question": "x" * 20_000, "stream": False})
            assert big.status_code == 413 and "over 10000 bytes" in big.json()["error"]

            def chunks():  # no content-length: counted as it arrives
                yield b'{"question": "'
                for _ in range(30):
                    yield b"y" * 1000
                yield b'"}'

            streamed = httpx.post(f"{url}/v1/research", content=chunks())
            assert streamed.status_code == 413
            ok = httpx.post(f"{url}/v1/research", json={"question": "q", "stream": False}, timeout=30)
            assert ok.status_code == 200


def test_finished_runs_live_on_disk_and_only_the_newest_in_memory(agent_factory, tmp_path):
    from dr_serve.api import RunStore

    store = RunStore(tmp_path / "runs", in_memory=2)
    for n in range(5):
        store.start(f"r{n}", "q")
        store.finish(f"r{n}", None, None)
    assert list(store.finished) == ["r3", "r4"] and not store.running
    assert must(store.get("r0"))["status"] == "done"  # from disk
    assert RunStore(None).directory.is_dir()  # without runs_dir: a temporary folder


def test_a_run_store_that_cannot_write_still_frees_the_slot(agent_factory, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    with scripted_server(lambda body: Reply(content=None, tool_calls=[call("answer", text="42")])) as llm:
        app = create_app(agent_factory(llm.url), ApiConfig(max_concurrent=1, runs_dir=runs))
        with serving(app) as url:
            shutil.rmtree(runs)  # rm -rf runs while the server is up
            for _ in range(3):  # with the slot lost, the second would get 429
                response = httpx.post(
                    f"{url}/v1/research", json={"question": "q", "stream": False}, timeout=30
                )
                assert response.status_code == 200 and response.json()["status"] == "done"


def test_docs_and_the_schema_need_the_token_and_upstream_errors_are_scrubbed(agent_factory):
    leaked = '{"error": {"message": "Incorrect API key provided: sk-live-1234567890abcdef"}}'
    with scripted_server(lambda body: Reply(status=401, error_body=leaked)) as llm:
        agent = agent_factory(llm.url)
        agent.llm.config.api_key = "sk-live-1234567890abcdef"
        with serving(create_app(agent, ApiConfig(api_key="s3cret"))) as url:
            for path in ("/docs", "/redoc", "/openapi.json"):
                assert httpx.get(f"{url}{path}").status_code in (401, 404), path
            auth = {"Authorization": "Bearer s3cret"}
            assert httpx.get(f"{url}/openapi.json", headers=auth).json()["info"]["title"] == "dr research API"
            run = httpx.post(
                f"{url}/v1/research", json={"question": "q", "stream": False}, headers=auth, timeout=30
            ).json()
    assert run["status"] == "failed" and "HTTP 401" in run["error"]
    assert "1234567890abcdef" not in json.dumps(run)
