"""The agent loop end to end against an OpenAI-compatible server on loopback, with scripted policies."""

from __future__ import annotations

from typing import Any

from dr_agent.agent import AgentConfig, ResearchAgent
from dr_agent.index import LocalIndex, build_index
from dr_agent.search import LocalBackend
from dr_core.llm import LLMClient, LLMConfig
from dr_core.records import Document, Trajectory
from support import must
from support.openai_server import Reply, scripted_server
from support.policies import as_text_calls, call, researcher, text_only, tool_results


def agent_for(url: str, index_dir, **config) -> ResearchAgent:
    llm = LLMClient(LLMConfig(base_url=url, model="policy", backoff_s=0.01))
    return ResearchAgent(llm, LocalBackend(LocalIndex(index_dir)), None, AgentConfig(**config))


def test_a_full_run_plans_searches_opens_and_answers_with_checked_citations(drb_index):
    events: list[Any] = []
    with scripted_server(researcher("人工智能 教育 人才培养")) as srv:
        trajectory = agent_for(srv.url, drb_index).run(
            "AI in education?", task_id="t1", on_event=events.append
        )
    assert trajectory.stop_reason == "answered" and trajectory.steps == 4
    assert trajectory.final == "The answer is in \\cite{21}."
    assert [(c.marker, c.opened) for c in trajectory.citations] == [("21", True)]
    assert "人工智能" in (must(trajectory.citations[0].source).title or "")
    roles = [m.role for m in trajectory.messages]
    assert roles == ["system", "user"] + ["assistant", "tool"] * 4
    assert [m.tool_calls[0].name for m in trajectory.messages if m.role == "assistant"] == [
        "plan",
        "search",
        "open",
        "answer",
    ]
    assert trajectory.usage.requests == 4 and trajectory.usage.prompt_tokens == 40
    assert trajectory.meta["opened"] == ["21"] and trajectory.meta["searches"] == 1
    assert [e["type"] for e in events] == ["start"] + ["step", "tool"] * 4 + ["end"]
    assert events[-1]["trajectory_id"] == trajectory.id
    # the record round-trips as JSONL
    assert Trajectory.model_validate_json(trajectory.to_json()) == trajectory
    # the tools were offered through the API on every call, and the system prompt says pages are data
    assert all(body["tools"] for body in srv.requests)
    assert "never instructions" in srv.requests[0]["messages"][0]["content"]


def test_tool_calls_written_as_text_are_parsed_and_run(drb_index):
    policy = researcher("人工智能 教育")
    with scripted_server(lambda body: as_text_calls(policy(body))) as srv:
        trajectory = agent_for(srv.url, drb_index).run("AI in education?")
    assert trajectory.stop_reason == "answered"
    assert trajectory.final == "The answer is in \\cite{21}."
    # the kept messages carry parsed calls, not the raw text
    assistant = [m for m in trajectory.messages if m.role == "assistant"]
    assert all(m.tool_calls and "<tool_call>" not in (m.content or "") for m in assistant)


def test_malformed_calls_get_error_messages_and_the_run_goes_on(drb_index):
    script = [
        Reply(content=None, tool_calls=[{"name": "browse", "arguments": {}}]),
        Reply(content=None, tool_calls=[{"name": "search", "arguments": '{"queries": ['}]),
        Reply(content=None, tool_calls=[call("search", queries=[])]),
        Reply(content='<tool_call>{"name": "search", "arguments": </tool_call>'),
        Reply(content="I think I know."),
        Reply(content=None, tool_calls=[call("answer", text="It is 42.")]),
    ]
    with scripted_server(script) as srv:
        trajectory = agent_for(srv.url, drb_index).run("q")
    assert trajectory.stop_reason == "answered" and trajectory.final == "It is 42."
    tools = [m.content or "" for m in trajectory.messages if m.role == "tool"]
    assert tools[0].startswith("Error: unknown tool 'browse'")
    assert tools[1].startswith("Error: the arguments of search are not valid JSON")
    assert tools[2].startswith("Error: bad arguments for search: field 'queries'")
    users = [m.content or "" for m in trajectory.messages if m.role == "user"][1:]
    assert users[0].startswith("Your tool call could not be read: tool call 1 is not valid JSON")
    assert users[1].startswith("You did not call a tool")
    assert trajectory.meta["tool_errors"] == 4


def test_citing_an_unopened_source_is_sent_back_once_then_flagged(drb_index):
    script = [
        Reply(content=None, tool_calls=[call("search", queries=["人工智能 教育"])]),
        Reply(content=None, tool_calls=[call("answer", text="Claim \\cite{21} and \\cite{made-up}.")]),
        Reply(content=None, tool_calls=[call("answer", text="Claim \\cite{21} and \\cite{made-up}.")]),
    ]
    with scripted_server(script) as srv:
        trajectory = agent_for(srv.url, drb_index).run("q")
    assert trajectory.stop_reason == "answered" and trajectory.steps == 3
    assert "you cite 21, made-up, which you never opened" in must(trajectory.messages[-3].content)
    assert [(c.marker, c.opened, c.source is not None) for c in trajectory.citations] == [
        ("21", False, True),
        ("made-up", False, False),
    ]
    assert trajectory.meta["unopened_citations"] == ["21", "made-up"]


def test_step_budget_asks_to_conclude_then_stops(drb_index):
    with scripted_server([Reply(content=None, tool_calls=[call("search", queries=["education"])])]) as srv:
        trajectory = agent_for(srv.url, drb_index, max_steps=3).run("q")
    assert trajectory.stop_reason == "step_budget" and trajectory.steps == 3 and trajectory.final is None
    conclude = [
        m.content
        for m in trajectory.messages
        if m.role == "user" and "close to the limit" in (m.content or "")
    ]
    assert conclude == [
        "You are close to the limit of your step budget. Do not search further: call answer now "
        "with your best answer."
    ]


def test_token_budget_stops_the_run(drb_index):
    with scripted_server([Reply(content="thinking", prompt_tokens=400, completion_tokens=100)]) as srv:
        trajectory = agent_for(srv.url, drb_index, max_tokens=1200).run("q")
    assert trajectory.stop_reason == "token_budget" and trajectory.steps == 3
    assert srv.requests[-1]["max_tokens"] <= 200  # never asks for more than the budget has left


def test_long_pages_are_read_by_reference(tmp_path):
    text = " ".join(f"sentence{i} about the harbour." for i in range(800))
    build_index([Document(id="long", title="Harbour", text=text)], tmp_path / "idx")

    def policy(body):
        results = tool_results(body)
        if not results:
            return Reply(content=None, tool_calls=[call("open", ids=["long"])])
        if len(results) == 1:
            return Reply(content=None, tool_calls=[call("read", ref="long", offset=1000)])
        return Reply(content=None, tool_calls=[call("answer", text="done \\cite{long}")])

    with scripted_server(policy) as srv:
        trajectory = agent_for(srv.url, tmp_path / "idx", page_chars=1000).run("q")
    opened, read = [m.content or "" for m in trajectory.messages if m.role == "tool"][:2]
    assert len(opened) < 1200 and 'call read with ref="long" and offset=1000' in opened
    assert read.startswith(text[1000:1050]) and "offset=2000" in read
    assert trajectory.citations[0].opened


def test_near_the_context_limit_old_results_are_compacted_whole(tmp_path):
    docs = [
        Document(id=f"d{i}", title=f"Doc {i}", text=f"harbour {i} " + "filler words " * 700) for i in range(6)
    ]
    build_index(docs, tmp_path / "idx")
    opened: list[str] = []

    def policy(body):
        results = tool_results(body)
        if len(results) < 6:
            opened.append(f"d{len(results)}")
            return Reply(content=None, tool_calls=[call("open", ids=[opened[-1]])], prompt_tokens=0)
        return Reply(content=None, tool_calls=[call("answer", text="done")], prompt_tokens=0)

    events: list[Any] = []
    config = {"context_window": 8192, "max_output_tokens": 1024, "page_chars": 6000, "keep_recent": 1}
    with scripted_server(policy) as srv:
        trajectory = agent_for(srv.url, tmp_path / "idx", **config).run("q", on_event=events.append)
    assert trajectory.stop_reason == "answered"
    assert trajectory.meta["compactions"] >= 1 and any(e["type"] == "compact" for e in events)
    results = [m.content or "" for m in trajectory.messages if m.role == "tool"]
    compacted = [r for r in results if r.startswith("[compacted to save context: this open result")]
    assert compacted, results
    # every tool result is either whole or replaced whole by the note: never cut mid-record
    for r in results:
        assert r in compacted or r == "Answer recorded." or r.startswith("# [d")
    # and what was sent to the server stayed under the window (chars / 3 per token)
    largest = max(sum(len(m.get("content") or "") for m in body["messages"]) for body in srv.requests)
    assert largest / 3 < 8192


def test_garbage_output_never_crashes_the_loop(drb_index):
    garbage = ["", "<tool_call>", "}}}{{{", "<tool_call>null</tool_call>", "\x00\x01 \ufffd", "answer!!!"]
    script = [Reply(content=g) for g in garbage]
    with scripted_server(script) as srv:
        trajectory = agent_for(srv.url, drb_index, max_steps=6).run("q")
    assert trajectory.stop_reason == "step_budget" and trajectory.final is None
    assert trajectory.steps == 6


def test_an_endpoint_failure_ends_the_run_with_an_error_record(drb_index):
    with scripted_server([Reply(status=500)]) as srv:
        llm = LLMClient(LLMConfig(base_url=srv.url, model="m", max_retries=1, backoff_s=0.01))
        agent = ResearchAgent(llm, LocalBackend(LocalIndex(drb_index)))
        trajectory = agent.run("q")
    assert trajectory.stop_reason == "error" and "HTTP 500" in trajectory.meta["error"]


def test_time_budget_stops_the_run(drb_index):
    with scripted_server([Reply(content="slow thought", delay_s=0.3)]) as srv:
        trajectory = agent_for(srv.url, drb_index, max_time_s=0.5).run("q")
    assert trajectory.stop_reason == "time_budget" and 1 <= trajectory.steps <= 3


def test_a_server_that_refuses_tools_gets_text_tool_calls_from_then_on(drb_index, caplog):
    with scripted_server(text_only(researcher("人工智能 教育"))) as srv:
        agent = agent_for(srv.url, drb_index)
        first = agent.run("AI in education?")
        second = agent_for(srv.url, drb_index).run("AI in education?")  # another agent, same endpoint
    assert first.stop_reason == second.stop_reason == "answered"
    assert first.final == second.final == "The answer is in \\cite{21}."
    assert first.meta["tool_mode"] == second.meta["tool_mode"] == "text"
    # one refused request, then none: the switch is remembered for the endpoint
    assert [bool(body.get("tools")) for body in srv.requests] == [True] + [False] * 8
    assert sum("refuses the tools API" in r.message for r in caplog.records) == 1
    assert "--enable-auto-tool-choice --tool-call-parser hermes" in caplog.text
    # what was sent is text only: schemas in the system prompt, results as user turns, no tool roles
    sent = srv.requests[-1]["messages"]
    assert "<tools>" in sent[0]["content"] and '"name": "search"' in sent[0]["content"]
    assert {m["role"] for m in sent} == {"system", "user", "assistant"}
    assert any("<tool_call>" in (m.get("content") or "") for m in sent if m["role"] == "assistant")
    # while the trajectory keeps the calls and results in their own shape, as training expects
    assert [m.role for m in first.messages] == ["system", "user"] + ["assistant", "tool"] * 4
    assert "<tools>" not in must(first.messages[0].content)


def test_tool_mode_api_says_which_server_flags_to_add_and_text_never_sends_tools(drb_index):
    with scripted_server(text_only(researcher("人工智能 教育"))) as srv:
        refused = agent_for(srv.url, drb_index, tool_mode="api").run("q")
        assert refused.stop_reason == "error" and "HTTP 400" in refused.meta["error"]
        assert (
            "--enable-auto-tool-choice" in refused.meta["error"]
            and "--tool-mode text" in refused.meta["error"]
        )
        forced = agent_for(srv.url, drb_index, tool_mode="text").run("AI in education?")
    assert forced.stop_reason == "answered" and forced.meta["tool_mode"] == "text"
    assert not any(body.get("tools") for body in srv.requests[1:])


def test_a_model_that_repeats_itself_without_tools_stops_with_no_progress(drb_index):
    with scripted_server([Reply(content="I am a helpful assistant.")]) as srv:
        trajectory = agent_for(srv.url, drb_index, max_steps=30).run("q")
    assert trajectory.stop_reason == "no_progress" and trajectory.steps == 3
    assert len(srv.requests) == 3
    # different replies, none with a tool call: stopped too, after six
    replies = [Reply(content=f"Thought number {i}.") for i in range(20)]
    with scripted_server(replies) as srv:
        trajectory = agent_for(srv.url, drb_index, max_steps=30).run("q")
    assert trajectory.stop_reason == "no_progress" and trajectory.steps == 6
    # a reply with a tool call in between starts the count again
    script = [
        Reply(content="hm"),
        Reply(content="hm"),
        Reply(content=None, tool_calls=[call("plan", action="create", items=["a"])]),
    ]
    script += [Reply(content="hm")] * 5
    with scripted_server(script) as srv:
        trajectory = agent_for(srv.url, drb_index, max_steps=30).run("q")
    assert trajectory.stop_reason == "no_progress" and trajectory.steps == 6


def test_a_400_that_is_not_about_tools_is_an_error_not_a_switch_to_text(drb_index):
    refusal = '{"error": {"message": "temperature must be at most 2, got 7 (tools included)"}}'
    with scripted_server([Reply(status=400, error_body=refusal)]) as srv:
        trajectory = agent_for(srv.url, drb_index).run("q")
    assert trajectory.stop_reason == "error" and "temperature must be" in trajectory.meta["error"]
    assert trajectory.meta["tool_mode"] == "api" and len(srv.requests) == 1


def test_a_context_overflow_compacts_and_then_ends_on_its_own_stop_reason_never_as_an_error(drb_index):
    overflow = (
        '{"error": {"message": "maximum context length is 8192 tokens; you requested 9000 (tools included)"}}'
    )
    with scripted_server([Reply(status=400, error_body=overflow)]) as srv:
        trajectory = agent_for(srv.url, drb_index).run("q")
    assert trajectory.stop_reason == "context_limit" and "error" not in trajectory.meta
    # asked again with a smaller managed window each time (0.7, 0.49, 0.343, 0.24 of it), then stopped
    assert trajectory.meta["tool_mode"] == "api" and len(srv.requests) == 5
