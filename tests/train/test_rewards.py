"""RL's reward for report tasks, and the truth beside it: the rules' verdicts, which the policy never sees.

A judge that flatters a flawed report shows as the gap between its reward and the rules' score; a judge
that abstains gives no reward (the rollout is dropped, never scored 0); a judge that fails stops the run,
naming its URL.
"""

from __future__ import annotations

import random

import pytest

from dr_core.llm import LLMClient, LLMConfig
from dr_core.records import Task
from dr_data.judge_data import oracle_report, perturb
from dr_data.report_tasks import sample_report_tasks
from dr_data.world import build_world
from dr_judge.judge import ChecklistJudge, JudgeConfig, JudgeError, judge_reply
from dr_train.rl.rewards import Rewarder, reward_metrics
from support.openai_server import Reply, scripted_server


@pytest.fixture(scope="module")
def task() -> Task:
    return next(iter(sample_report_tasks(build_world(seed=2, n_entities=400), 1, test_share=0.2)))


@pytest.fixture(scope="module")
def question() -> Task:
    return Task(id="q", question="Where is X?", type="deep_search", answer="Paris")


def flatterer(body):
    """A judge that finds every requirement met and no flaw, whatever the report says."""
    user = body["messages"][-1]["content"]
    items = [part.split("]", 1) for part in user.split("\n- [")[1:]]
    verdicts = [(i, "met" if "(requirement)" in rest else "not_met", "looks fine") for i, rest in items]
    return Reply(content=judge_reply(verdicts))


def judge_at(url: str) -> ChecklistJudge:
    return ChecklistJudge(LLMClient(LLMConfig(base_url=url, model="judge")), JudgeConfig(parse_retries=0))


def test_the_rules_reward_is_the_truth_and_finds_flaws_and_fatal_citations(task, question):
    rewarder = Rewarder(None)
    assert rewarder.source == "rules"
    good = rewarder.score(task, oracle_report(task))
    assert good.reward == good.true == 1.0 and not good.flaw and not good.fatal and good.citations >= 2
    wrong = rewarder.score(
        task,
        perturb(task, "change_number", random.Random(0)) or perturb(task, "swap_entity", random.Random(0)),
    )
    assert wrong.flaw and wrong.true is not None and wrong.true < 1.0 and wrong.reward == wrong.true
    fabricated = rewarder.score(task, perturb(task, "fabricate_citation", random.Random(0)))
    assert fabricated.fatal and fabricated.true == 0.0
    assert rewarder.score(question, "Answer: Paris").reward == 1.0
    assert rewarder.score(question, "Answer: Lyon").reward == 0.0


def test_a_flattering_judge_gives_the_reward_and_the_gap_to_the_truth_shows(task, question):
    flawed = perturb(task, "fabricate_citation", random.Random(0))
    with scripted_server(flatterer) as srv:
        rewarder = Rewarder(judge_at(srv.url))
        assert rewarder.source == "judge"
        scored, seconds = rewarder.score_all(
            [(task, flawed, None), (task, oracle_report(task), None), (question, "Answer: Paris", None)]
        )
    assert [s.reward for s in scored] == [1.0, 1.0, 1.0]
    assert [s.true for s in scored] == [0.0, 1.0, None]
    # every item went to the judge (none decided by its rule), and the question never did
    assert len(srv.requests) == 2 and seconds > 0
    metrics = reward_metrics(scored, judge_source=True)
    assert metrics["reward_judge"] == 1.0 and metrics["reward_true"] == 0.5
    assert metrics["reward_gap"] == 0.5 and metrics["fatal_rate"] == 0.5 and metrics["reports"] == 2
    assert metrics["reward_questions"] == 1.0


def test_rules_as_the_reward_never_ask_the_judge_about_items_with_a_rule(task):
    with scripted_server(flatterer) as srv:
        rewarder = Rewarder(judge_at(srv.url), "rules")
        scored = rewarder.score(task, perturb(task, "fabricate_citation", random.Random(0)))
    assert scored.reward == scored.true == 0.0 and srv.requests == []


def test_a_judge_that_abstains_gives_no_reward_never_a_zero(task):
    cut = Reply(content='{"verdicts":[{"id":"fact1","verd', finish_reason="length")
    with scripted_server([cut]) as srv:
        scored = Rewarder(judge_at(srv.url)).score(task, oracle_report(task))
    assert scored.reward is None and scored.judged is None and scored.true == 1.0


def test_a_judge_that_fails_names_its_url(task):
    with scripted_server([Reply(status=500)]) as srv:
        url = srv.url
        with pytest.raises(JudgeError, match=url.split("//")[1]) as caught:
            Rewarder(judge_at(url)).score(task, oracle_report(task))
    assert caught.value.exit_code == 3


def test_items_without_a_rule_need_a_judge(task):
    loose = task.model_copy(update={"checklist": [task.checklist[0].model_copy(update={"check": None})]})
    with pytest.raises(ValueError, match="judge model"):
        Rewarder(None).check([loose])
    with pytest.raises(ValueError, match="--reward judge needs a judge model"):
        Rewarder(None, "judge")
    with pytest.raises(ValueError, match="cannot be rewarded"):
        Rewarder(None).check([Task(id="x", question="?")])
