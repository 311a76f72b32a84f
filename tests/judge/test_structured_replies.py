"""Structured replies: judge and teacher requests carry the reply's JSON schema as response_format; a
server that refuses the field is asked without it, and the send-back loop still holds."""

from __future__ import annotations

import json

from dr_core.llm import LLMClient, LLMConfig
from dr_core.records import ChecklistItem, Report
from dr_judge.judge import VERDICTS, ChecklistJudge, verdicts_schema
from support.openai_server import Reply, scripted_server

REFUSAL = json.dumps(
    {"object": "error", "message": "response_format json_schema is not supported by this server", "code": 400}
)


def items():
    return [ChecklistItem(id="a", text="Names the river"), ChecklistItem(id="b", text="Gives a year")]


def verdict_reply(ids):
    return Reply(
        content=json.dumps({"verdicts": [{"id": i, "verdict": "met", "rationale": "ok"} for i in ids]})
    )


def test_judge_requests_carry_the_verdicts_schema_for_exactly_their_items():
    with scripted_server([verdict_reply(["a", "b"])]) as srv:
        judge = ChecklistJudge(LLMClient(LLMConfig(base_url=srv.url, model="judge")))
        verdicts = judge.verdicts("q", "the report", items())
    assert [v.verdict for v in verdicts] == ["met", "met"]
    sent = srv.requests[0]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    schema = sent["json_schema"]["schema"]
    entry = schema["properties"]["verdicts"]
    assert entry["minItems"] == entry["maxItems"] == 2 and entry["items"] is False
    # each position's id is fixed, so no item can be judged twice and none left out
    assert [e["properties"]["id"]["const"] for e in entry["prefixItems"]] == ["a", "b"]
    assert all(e["properties"]["verdict"]["enum"] == list(VERDICTS) for e in entry["prefixItems"])
    # the evidence comes before the verdict: a constrained model writes properties in the schema's order
    assert all(list(e["properties"]) == ["id", "rationale", "verdict"] for e in entry["prefixItems"])
    assert verdicts_schema(["a", "b"])[1] == schema


def test_a_server_that_refuses_response_format_is_asked_without_it_and_told_once(caplog):
    def server(body):
        if "response_format" in body:
            return Reply(status=400, error_body=REFUSAL)
        return verdict_reply(["a", "b"])

    with scripted_server(server) as srv:
        client = LLMClient(LLMConfig(base_url=srv.url, model="judge", max_retries=0))
        judge = ChecklistJudge(client)
        with caplog.at_level("WARNING", logger="dr"):
            judge.verdicts("q", "one", items())
            judge.verdicts("q", "two", items())
    assert ["response_format" in r for r in srv.requests] == [True, False, False]
    assert caplog.text.count("refuses response_format") == 1


def test_a_400_about_something_else_is_not_taken_for_a_refusal():
    with scripted_server(
        [Reply(status=400, error_body='{"error": {"message": "temperature too high"}}')]
    ) as srv:
        client = LLMClient(LLMConfig(base_url=srv.url, model="judge", max_retries=0))
        try:
            ChecklistJudge(client).verdicts("q", "one", items())
        except Exception as exc:  # the judge's own error, naming the server's reason
            assert "temperature too high" in str(exc)
    assert client.takes_response_format and len(srv.requests) == 1


def test_the_reverse_teacher_sends_the_plan_schema():
    from dr_data.reverse import PLAN_SCHEMA, reverse_with_teacher

    plan = {
        "query": "How do rivers shape cities?",
        "plan": [
            {"title": "Rivers", "description": "d", "queries": ["rivers"]},
            {"title": "Cities", "description": "d", "queries": ["cities"]},
        ],
        "checklist": [{"text": "Names rivers", "weight": 3, "polarity": "positive"}],
    }
    with scripted_server([Reply(content=json.dumps(plan))]) as srv:
        teacher = LLMClient(LLMConfig(base_url=srv.url, model="teacher"))
        result = reverse_with_teacher(Report(id="r", text="Rivers shape cities. " * 20), teacher)
    assert result.query == plan["query"]
    assert srv.requests[0]["response_format"]["json_schema"]["schema"] == PLAN_SCHEMA[1]
