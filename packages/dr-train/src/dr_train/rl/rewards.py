"""RL's rewards, and the truth beside them.

A question task (one with a reference answer) is rewarded by its rule: the normalized exact answer. A report
task (a checklist) is rewarded either by the rules of its items (`reward="rules"`: the world's true
verdicts, the upper bound of what a judge could give) or by a judge model that rules on every item
(`reward="judge"`: the realistic case, a trained judge served by vLLM). Whatever the reward, every report
whose checklist items all carry a rule check is also scored by those rules, and the policy never sees that
score: `reward_true`. The gap between the two, and the rates of flaws and fatal flaws the rules find, are how
reward hacking shows (the policy learning what the judge likes instead of what is true).

A judge that abstains on a report (its reply cut off at the token cap) gives it no reward: `Scored.reward`
is None, and the trainer drops the rollout from its group. A judge that fails (unreachable, or no usable
reply after its send-backs) stops the run with exit 3, naming its URL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from dr_core.concurrency import ordered_map
from dr_core.records import Citation, Judgment, Task
from dr_judge.checks import cited
from dr_judge.judge import ChecklistJudge, JudgeConfig, JudgeError
from dr_train.config import RewardMode as Mode
from dr_train.config import RewardSource


@dataclass
class Scored:
    """One rollout's reward and, for report tasks, the rules' verdict on it."""

    reward: float | None  # what the policy trains on; None: the judge abstained, the rollout is dropped
    report: bool  # a report task (a checklist), not a question
    true: float | None = None  # the rules' score (report tasks whose items all carry a rule check)
    judged: float | None = None  # the judge model's score, when it gave the reward
    flaw: bool = False  # the rules found a claim that contradicts the world (a non-fatal flaw item)
    fatal: bool = False  # the rules found a fatal flaw (a source cited that was never allowed)
    words: int = 0
    citations: int = 0


def rule_checked(task: Task) -> bool:
    """Whether every checklist item of `task` carries a rule check, so the rules know its true verdicts."""
    return bool(task.checklist) and all(item.check is not None for item in task.checklist)


class Rewarder:
    """Scores rollouts: the reward the policy trains on, and the rules' truth beside it.

    `judge`: a ChecklistJudge with a model (None: no model is configured). `source` "auto" takes the judge
    for report tasks when there is one, and the rules otherwise."""

    def __init__(
        self,
        judge: ChecklistJudge | None,
        source: RewardSource = "auto",
        mode: Mode = "strict",
        concurrency: int = 16,
    ) -> None:
        if source == "auto":
            source = "judge" if judge is not None and judge.llm is not None else "rules"
        if source == "judge" and (judge is None or judge.llm is None):
            raise ValueError(
                "--reward judge needs a judge model: --judge-serve FOLDER, or --judge-base-url and "
                "--judge-model"
            )
        self.source: Literal["rules", "judge"] = source
        self.mode = mode
        self.concurrency = max(1, concurrency)
        # the rules: every item decided by its check, answers by normalized match, never a model
        self.rules = ChecklistJudge(None, JudgeConfig(mode=mode, llm_fallback=False))
        self.judge = judge
        if judge is not None and judge.llm is not None:
            # the judge rules on every checklist item itself when it gives the reward; with the rules as the
            # reward, it decides only the items that carry no rule check
            settings = judge.config.model_copy(update={"mode": mode, "checks": source == "rules"})
            self.judge = ChecklistJudge(judge.llm, settings)

    def check(self, tasks: list[Task]) -> None:
        """ValueError naming tasks this rewarder cannot score."""
        cannot = [t.id for t in tasks if t.answer is None and not t.checklist]
        if cannot:
            raise ValueError(
                f"tasks without an answer or checklist cannot be rewarded: {', '.join(cannot[:5])}"
            )
        model_free = self.judge is None or self.judge.llm is None
        open_items = [t.id for t in tasks if t.answer is None and not rule_checked(t)]
        if open_items and model_free:
            raise ValueError(
                "checklist items without a rule check need a judge model (--judge-base-url and "
                f"--judge-model, or --judge-serve): {', '.join(open_items[:5])}"
            )

    @property
    def url(self) -> str | None:
        return (
            self.judge.llm.config.base_url if self.judge is not None and self.judge.llm is not None else None
        )

    def score(self, task: Task, text: str | None, citations: list[Citation] | None = None) -> Scored:
        if task.answer is not None and (task.type == "deep_search" or not task.checklist):
            value = self.rules.judge(task, text, "rollout", citations).score
            return Scored(reward=value, report=False)
        truth = self.rules.judge(task, text, "rollout", citations) if rule_checked(task) else None
        out = Scored(
            reward=None,
            report=True,
            words=len((text or "").split()),
            citations=len(cited(text or "", citations)),
        )
        if truth is not None:
            out.true = truth.score
            out.fatal = truth.fatal
            out.flaw = _flaw_found(task, truth)
        if self.source == "rules" and truth is not None:
            out.reward = truth.score
            return out
        assert self.judge is not None
        try:
            out.judged = self.judge.judge(task, text, "rollout", citations).score
        except JudgeError as exc:
            raise JudgeError(f"the judge at {self.url} failed on task {task.id}: {exc}") from None
        out.reward = out.judged
        return out

    def score_all(
        self, jobs: list[tuple[Task, str | None, list[Citation] | None]]
    ) -> tuple[list[Scored], float]:
        """Every rollout's Scored, the judge's calls `concurrency` at a time (a vLLM server batches them);
        and the seconds it took."""
        started = time.perf_counter()
        scored = list(ordered_map(lambda job: self.score(*job), jobs, self.concurrency))
        return scored, time.perf_counter() - started


def _flaw_found(task: Task, truth: Judgment) -> bool:
    met = {v.item_id for v in truth.verdicts if v.verdict in ("met", "partially_met")}
    return any(item.polarity == "negative" and not item.fatal and item.id in met for item in task.checklist)


def reward_metrics(scored: list[Scored], judge_source: bool) -> dict[str, Any]:
    """The step's figures by kind of task: in a run that mixes them, the question tasks' mean reward; for
    report tasks, the reward the judge gave beside the rules' truth, their gap, the shares of reports with
    a flaw and with a fatal flaw, and the reports' length and citations."""
    reports = [s for s in scored if s.report]
    questions = [s.reward for s in scored if not s.report and s.reward is not None]
    if not reports:
        return {}
    out: dict[str, Any] = {"reports": len(reports)}
    if questions:
        out["reward_questions"] = _mean(questions)
    true = [s.true for s in reports if s.true is not None]
    if true:
        out["reward_true"] = _mean(true)
        known = [s for s in reports if s.true is not None]
        out["flaw_rate"] = _mean([float(s.flaw) for s in known])
        out["fatal_rate"] = _mean([float(s.fatal) for s in known])
    if judge_source:
        judged = [s for s in reports if s.judged is not None]
        if judged:
            out["reward_judge"] = _mean([s.judged for s in judged if s.judged is not None])
            both = [s for s in judged if s.true is not None]
            if both:
                out["reward_gap"] = _mean([(s.judged or 0.0) - (s.true or 0.0) for s in both])
    out["report_words"] = round(sum(s.words for s in reports) / len(reports), 1)
    out["citations"] = round(sum(s.citations for s in reports) / len(reports), 2)
    return out


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4)
