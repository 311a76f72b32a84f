"""The LLM client against a real HTTP server on loopback."""

from __future__ import annotations

import pytest

from dr_core.errors import LLMError
from dr_core.llm import LLMClient, LLMConfig
from dr_core.records import Message, ToolCall
from support.openai_server import Rendezvous, Reply, scripted_server

FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05}


def client(url: str, **kw) -> LLMClient:
    return LLMClient(LLMConfig(base_url=url, model="m", **{**FAST, **kw}))


def test_chat_returns_content_usage_and_cost():
    with scripted_server([Reply(content="hello", prompt_tokens=1000, completion_tokens=500)]) as srv:
        c = client(srv.url, price_input_per_mtok=2.0, price_output_per_mtok=8.0)
        result = c.chat([Message(role="user", content="hi")], temperature=0)
    assert result.message.content == "hello"
    assert result.finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (1000, 500)
    assert result.usage.cost_usd == pytest.approx((1000 * 2 + 500 * 8) / 1e6)
    assert c.usage.requests == 1 and c.usage.cost_usd == pytest.approx(0.006)
    assert srv.requests[0] == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
    }


def test_tool_calls_are_sent_and_parsed_and_history_round_trips():
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    replies = [
        Reply(content=None, tool_calls=[{"id": "c1", "name": "search", "arguments": {"queries": ["a", "b"]}}])
    ]
    with scripted_server(replies) as srv:
        c = client(srv.url)
        result = c.chat([Message(role="user", content="find")], tools=tools)
        history = [
            Message(role="user", content="find"),
            result.message,
            Message(role="tool", tool_call_id="c1", content="results"),
        ]
        c.chat(history, tools=tools)
    assert result.finish_reason == "tool_calls"
    assert result.message.tool_calls == [ToolCall(id="c1", name="search", arguments={"queries": ["a", "b"]})]
    assert srv.requests[0]["tools"] == tools
    sent = srv.requests[1]["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "search", "arguments": '{"queries":["a","b"]}'}
    assert sent[2] == {"role": "tool", "content": "results", "tool_call_id": "c1"}


def test_malformed_tool_arguments_are_kept_raw():
    with scripted_server(
        [Reply(content=None, tool_calls=[{"name": "search", "arguments": '{"q": '}])]
    ) as srv:
        call = client(srv.url).chat([{"role": "user", "content": "x"}]).message.tool_calls[0]
    assert call.name == "search" and call.arguments == {} and call.raw_arguments == '{"q": '


def test_retries_rate_limits_then_succeeds():
    script = [Reply(status=429, headers={"Retry-After": "0"}), Reply(status=503), Reply(content="finally")]
    with scripted_server(script) as srv:
        c = client(srv.url, max_retries=3)
        result = c.chat([{"role": "user", "content": "x"}])
    assert result.message.content == "finally"
    assert len(srv.requests) == 3
    assert c.usage.requests == 1


def test_gives_up_after_max_retries():
    with scripted_server([Reply(status=500)]) as srv:
        with pytest.raises(LLMError, match="giving up after 3 attempts; last error: HTTP 500"):
            client(srv.url, max_retries=2).chat([{"role": "user", "content": "x"}])
    assert len(srv.requests) == 3


def test_client_errors_are_not_retried_and_auth_errors_hint_at_the_key():
    with scripted_server([Reply(status=400, error_body='{"error": "bad request: no such model"}')]) as srv:
        with pytest.raises(LLMError, match=r"HTTP 400: .*no such model") as info:
            client(srv.url).chat([{"role": "user", "content": "x"}])
    assert info.value.status == 400 and len(srv.requests) == 1
    with scripted_server([Reply(status=401)]) as srv:
        with pytest.raises(LLMError, match="HTTP 401 \\(check --api-key"):
            client(srv.url).chat([{"role": "user", "content": "x"}])


def test_sends_the_api_key_as_bearer_token():
    with scripted_server([Reply()]) as srv:
        client(srv.url, api_key="sk-test").chat([{"role": "user", "content": "x"}])
    assert srv.headers[0]["Authorization"] == "Bearer sk-test"


def test_timeouts_are_retried_then_reported():
    with scripted_server([Reply(delay_s=1.0)]) as srv:
        with pytest.raises(LLMError, match="giving up after 2 attempts; last error: ReadTimeout"):
            client(srv.url, timeout_s=0.2, max_retries=1).chat([{"role": "user", "content": "x"}])
    assert len(srv.requests) == 2


def test_cache_answers_repeated_requests_from_disk(tmp_path):
    with scripted_server([Reply(content="first"), Reply(content="second")]) as srv:
        a = client(srv.url, cache_dir=tmp_path)
        one = a.chat([{"role": "user", "content": "x"}], temperature=0)
        # a new client over the same directory: the cache is on disk, not in memory
        b = client(srv.url, cache_dir=tmp_path)
        two = b.chat([{"role": "user", "content": "x"}], temperature=0)
        three = b.chat([{"role": "user", "content": "x"}], temperature=0.5)
    assert (one.message.content, one.cached) == ("first", False)
    assert (two.message.content, two.cached) == ("first", True)
    assert (three.message.content, three.cached) == ("second", False)
    assert len(srv.requests) == 2
    assert b.usage.cached_requests == 1 and b.usage.requests == 1


def test_streaming_delivers_deltas_and_assembles_tool_calls_and_usage():
    reply = Reply(
        content="The answer is 42.",
        chunks=4,
        tool_calls=[{"id": "c9", "name": "open", "arguments": {"ids": ["d1", "d2"]}}],
        prompt_tokens=7,
        completion_tokens=3,
    )
    deltas: list[str] = []
    with scripted_server([reply]) as srv:
        result = client(srv.url).chat([{"role": "user", "content": "x"}], stream=True, on_delta=deltas.append)
    assert len(deltas) == 4 and "".join(deltas) == "The answer is 42."
    assert result.message.content == "The answer is 42."
    assert result.message.tool_calls == [ToolCall(id="c9", name="open", arguments={"ids": ["d1", "d2"]})]
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (7, 3)
    assert srv.requests[0]["stream"] is True


def test_stream_broken_mid_answer_is_an_error_not_a_silent_retry():
    deltas: list[str] = []
    with scripted_server([Reply(content="abcdef", chunks=3, break_stream_after=1)]) as srv:
        with pytest.raises(LLMError, match="stream broke off mid-answer"):
            client(srv.url, max_retries=3).chat(
                [{"role": "user", "content": "x"}], stream=True, on_delta=deltas.append
            )
    assert deltas == ["ab"]
    assert len(srv.requests) == 1


def test_concurrency_is_bounded_and_results_keep_input_order():
    meet = Rendezvous(2)

    def script(body):
        meet.wait()
        return Reply(content="echo " + body["messages"][0]["content"], delay_s=0.05)

    with scripted_server(script) as srv:
        c = client(srv.url, concurrency=2)
        requests = [{"messages": [{"role": "user", "content": str(i)}]} for i in range(6)]
        results = list(c.chat_many(requests))
    assert [r.message.content for r in results] == [f"echo {i}" for i in range(6)]
    assert srv.max_in_flight == 2


def test_response_without_choices_is_an_error():
    with scripted_server([Reply()]) as srv:
        c = client(srv.url)
        with pytest.raises(LLMError, match="no choices"):
            c._result({"error": "x"}, cached=False)


def test_settings_come_from_the_environment(monkeypatch):
    with scripted_server([Reply(content="env")]) as srv:
        monkeypatch.setenv("DR_LLM_BASE_URL", srv.url)
        monkeypatch.setenv("DR_LLM_MODEL", "from-env")
        c = LLMClient.from_settings(model="from-flag")
        c.chat([{"role": "user", "content": "x"}])
    assert c.config.base_url == srv.url
    assert srv.requests[0]["model"] == "from-flag"
