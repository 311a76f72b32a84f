"""The judge's plumbing against an OpenAI-compatible server on loopback: strict parsing with retries,
batching, votes, deterministic items, exact answers, pairwise position swap. (Its accuracy is measured
against labels with `dr judge agree`, never against a scripted server.)"""

from __future__ import annotations

import json
import re

import pytest

from dr_core.llm import LLMClient, LLMConfig
from dr_core.records import Check, ChecklistItem, Task
from dr_judge.judge import ChecklistJudge, JudgeConfig, JudgeError, majority, parse_verdicts
from support.openai_server import Reply, scripted_server

TASK = Task(
    id="t1",
    question="Write a report on Velmora.",
    checklist=[
        ChecklistItem(id="founder", text="Names the founder", weight=2),
        ChecklistItem(
            id="year", text="Gives the founding year", weight=1, check=Check(type="regex", value=r"\b1821\b")
        ),
        ChecklistItem(id="halluc", text="Invents facts", weight=1, polarity="negative"),
    ],
)


def judge_for(url: str, **config) -> ChecklistJudge:
    return ChecklistJudge(
        LLMClient(LLMConfig(base_url=url, model="judge", backoff_s=0.01)), JudgeConfig(**config)
    )


def verdict_reply(**verdicts: str) -> Reply:
    body = {"verdicts": [{"id": k, "verdict": v, "rationale": f"because {k}"} for k, v in verdicts.items()]}
    return Reply(content="```json\n" + json.dumps(body) + "\n```")


def asked_ids(body) -> list[str]:
    return re.findall(r"^- \[([^\]]+)\]", body["messages"][1]["content"], re.MULTILINE)


def test_deterministic_items_never_reach_the_model_and_the_score_follows_the_rules():
    with scripted_server([verdict_reply(founder="met", halluc="partially_met")]) as srv:
        judgment = judge_for(srv.url).judge(TASK, "Velmora was founded in 1821 by Ada Quist.", "r1")
    assert asked_ids(srv.requests[0]) == ["founder", "halluc"]
    assert srv.requests[0]["temperature"] == 0
    by_id = {v.item_id: v for v in judgment.verdicts}
    assert by_id["year"].deterministic and by_id["year"].verdict == "met"
    assert by_id["founder"].rationale == "because founder"
    # strict: 2 + 1 earned, the flaw partly present costs 1: (3 - 1) / 3
    assert judgment.score == pytest.approx(2 / 3) and judgment.mode == "strict" and judgment.judge == "judge"


def test_unusable_replies_are_sent_back_then_refused():
    script = [
        Reply(content="I think the founder is named."),
        verdict_reply(founder="met"),  # missing an item
        verdict_reply(founder="yes", halluc="not_met"),  # not a verdict
        verdict_reply(founder="Partially met", halluc="not-met"),
    ]
    with scripted_server(script) as srv:
        judgment = judge_for(srv.url, parse_retries=3).judge(TASK, "text 1821", "r1")
    assert len(srv.requests) == 4
    corrections = [m["content"] for m in srv.requests[-1]["messages"] if m["role"] == "user"][1:]
    assert corrections[0].startswith("Your reply could not be used: the reply has no JSON object")
    assert "no verdict for items halluc" in corrections[1]
    assert "verdict 'yes' is not met, partially_met or not_met" in corrections[2]
    assert {v.item_id: v.verdict for v in judgment.verdicts}["founder"] == "partially_met"
    with scripted_server([Reply(content="no idea")]) as srv:
        with pytest.raises(JudgeError, match="no usable reply after 2 tries: the reply has no JSON object"):
            judge_for(srv.url, parse_retries=1).judge(TASK, "text", "r1")


def test_batch_size_one_asks_item_by_item():
    def script(body):
        return verdict_reply(**{i: "met" for i in asked_ids(body)})

    with scripted_server(script) as srv:
        judge_for(srv.url, batch=1).judge(TASK, "text", "r1")
    assert [asked_ids(b) for b in srv.requests] == [["founder"], ["halluc"]]


def test_votes_take_the_majority_with_distinct_seeds():
    script = [
        verdict_reply(founder="met", halluc="not_met"),
        verdict_reply(founder="not_met", halluc="not_met"),
        verdict_reply(founder="met", halluc="met"),
    ]
    with scripted_server(script) as srv:
        judgment = judge_for(srv.url, votes=3, temperature=0.7).judge(TASK, "text", "r1")
    assert [b["seed"] for b in srv.requests] == [0, 1, 2]
    by_id = {v.item_id: v for v in judgment.verdicts}
    assert by_id["founder"].verdict == "met" and by_id["founder"].votes == ["met", "not_met", "met"]
    assert by_id["halluc"].verdict == "not_met"


def test_majority_ties_go_to_the_lower_median():
    assert majority(["met", "not_met"]) == "not_met"
    assert majority(["met", "partially_met", "not_met"]) == "partially_met"
    assert majority(["met", "met", "partially_met", "partially_met"]) == "partially_met"


def test_parse_verdicts_is_strict_about_ids():
    with pytest.raises(ValueError, match="verdict for unknown item 'x'"):
        parse_verdicts('{"verdicts": [{"id": "x", "verdict": "met"}]}', ["a"])
    with pytest.raises(ValueError, match="item a has two verdicts"):
        parse_verdicts('{"verdicts": [{"id": "a", "verdict": "met"}, {"id": "a", "verdict": "met"}]}', ["a"])


def test_without_a_model_only_deterministic_items_can_be_judged():
    judge = ChecklistJudge(None)
    deterministic = Task(
        question="q", checklist=[ChecklistItem(text="year", check=Check(type="contains", value="1821"))]
    )
    assert judge.judge(deterministic, "in 1821", "r").score == 1.0
    with pytest.raises(JudgeError, match="needs a judge model"):
        judge.judge(TASK, "text", "r")


def test_no_response_scores_zero_without_asking():
    assert ChecklistJudge(None).judge(TASK, None, "r").score == 0.0


def test_exact_answers_match_deterministically_then_fall_back_to_the_model():
    task = Task(
        id="d1",
        question="Who founded Velmora?",
        type="deep_search",
        answer="Ada Quist",
        answer_aliases=["A. Quist"],
    )
    with scripted_server([Reply(content='{"correct": true, "rationale": "same person"}')]) as srv:
        judge = judge_for(srv.url)
        literal = judge.judge(task, "Answer: A. Quist", "r1")
        assert literal.score == 1.0 and literal.mode == "exact" and literal.judge == "deterministic"
        assert srv.requests == []
        fuzzy = judge.judge(task, "Answer: Adelheid Quist, the shipwright", "r2")
    assert fuzzy.score == 1.0 and fuzzy.verdicts[0].rationale == "same person"
    assert "Ada Quist" in srv.requests[0]["messages"][1]["content"]
    assert ChecklistJudge(None).judge(task, "Answer: Bo Lind", "r3").score == 0.0


def test_pairwise_runs_both_orders_and_disagreement_is_a_tie():
    def position_biased(body):
        return Reply(content='{"winner": "A", "rationale": "first is better"}')

    with scripted_server(position_biased) as srv:
        winner, orders, _ = judge_for(srv.url).compare("q", "report one", "report two")
    assert (winner, orders) == ("tie", ["a", "b"])
    first, second = (b["messages"][1]["content"] for b in srv.requests)
    assert first.index("report one") < first.index("report two")
    assert second.index("report two") < second.index("report one")

    def prefers_two(body):
        content = body["messages"][1]["content"]
        a_is_two = content.index("report two") < content.index("report one")
        return Reply(content=json.dumps({"winner": "A" if a_is_two else "B", "rationale": "two is better"}))

    with scripted_server(prefers_two) as srv:
        assert judge_for(srv.url).compare("q", "report one", "report two")[:2] == ("b", ["b", "b"])
