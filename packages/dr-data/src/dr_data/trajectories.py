"""`dr data trajectories`: teacher runs over tasks, judged, rejection-sampled, with error reflection.

For each task: N samples from the teacher through the real agent loop; each is judged (exact answer or
checklist); a wrong attempt is continued up to `reflections` times with a reflection turn (the judge's
rationale, never the answer); the correct ones are kept (the shortest by default). In kept trajectories
the hint is replaced by a neutral self-check and phrases that would reveal a judge are scrubbed, so the
model learns to verify, not to expect a grader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dr_core.concurrency import ordered_map
from dr_core.log import progress
from dr_core.pipe import Pipe
from dr_core.records import Message, Task, Trajectory

if TYPE_CHECKING:
    from dr_agent.agent import ResearchAgent
    from dr_judge.judge import ChecklistJudge

REFLECTION_HINT = (
    "This answer does not hold up: {rationale}. Reflect on which step went wrong, check the sources again, "
    "and continue the research before answering."
)
SELF_CHECK = (
    "Before this is recorded, check it: is every step of the answer supported by a source you opened?"
)
# Phrases in the teacher's own turns that would tell a trained model a grader exists.
REVEALING = re.compile(
    r"\b(?:the |my )?(?:judge|grader|reference answer|gold answer|was judged|judged (?:in)?correct|"
    r"marked (?:as )?(?:wrong|incorrect)|hint)\b[^.?!\n]*[.?!]?",
    re.IGNORECASE,
)


@dataclass
class Outcome:
    kept: list[Trajectory]
    samples: int
    correct: int  # samples judged correct (before keeping only the shortest)


def scrub(trajectory: Trajectory, hints: set[int]) -> Trajectory:
    """The trajectory with hint messages (by index) made neutral and revealing phrases removed."""
    messages: list[Message] = []
    for i, message in enumerate(trajectory.messages):
        if i in hints:
            messages.append(message.model_copy(update={"content": SELF_CHECK}))
        elif message.role == "assistant" and message.content and REVEALING.search(message.content):
            cleaned = " ".join(REVEALING.sub("", message.content).split())
            messages.append(message.model_copy(update={"content": cleaned or None}))
        else:
            messages.append(message)
    return trajectory.model_copy(update={"messages": messages})


def attempt(
    agent: ResearchAgent,
    judge: ChecklistJudge,
    task: Task,
    reflections: int,
    min_score: float,
    **sampling: Any,
) -> tuple[Trajectory, bool, int]:
    """One sample: (trajectory, whether it is correct, reflections used)."""
    trajectory = agent.run(task.question, task_id=task.id, **sampling)
    hints: set[int] = set()
    used = 0
    while True:
        if trajectory.stop_reason == "error":
            return trajectory, False, used
        judgment = judge.judge(task, trajectory.final, trajectory.id, trajectory.citations)
        if judgment.score is None:
            return trajectory, False, used  # the judge abstained: neither kept nor sent back
        if judgment.score >= (1.0 if task.answer is not None else min_score):
            kept = scrub(trajectory, hints) if hints else trajectory
            return (
                kept.model_copy(update={"meta": {**kept.meta, "score": judgment.score, "reflections": used}}),
                True,
                used,
            )
        if used >= reflections or trajectory.final is None:
            return trajectory, False, used
        used += 1
        rationale = (
            "; ".join(v.rationale for v in judgment.verdicts if v.verdict != "met") or "it is not correct"
        )
        # the hint answers the failed `answer` call, in place of "Answer recorded."
        history = list(trajectory.messages)
        history[-1] = history[-1].model_copy(update={"content": REFLECTION_HINT.format(rationale=rationale)})
        hints.add(len(history) - 1)
        trajectory = agent.run(task.question, task_id=task.id, history=history, **sampling)


@dataclass(frozen=True)
class Rejection:
    """How a task's teacher trajectories are rejection-sampled: `samples` attempts, each wrong one given up
    to `reflections` reflection turns; an exact-answer task's must be right, a checklist task's must reach
    `min_score`; `keep` the shortest correct one, or all."""

    samples: int = 1
    reflections: int = 3
    keep: Literal["shortest", "all"] = "shortest"
    temperature: float | None = None
    min_score: float = 0.8


def collect(
    agent: ResearchAgent, judge: ChecklistJudge, task: Task, rejection: Rejection = Rejection()
) -> Outcome:
    """Rejection sampling for one task."""
    samples, reflections, keep = rejection.samples, rejection.reflections, rejection.keep
    temperature, min_score = rejection.temperature, rejection.min_score
    correct: list[Trajectory] = []
    for n in range(samples):
        sampling: dict[str, Any] = {}
        if temperature is not None:
            sampling["temperature"] = temperature
        if samples > 1:
            sampling["seed"] = n
        trajectory, ok, _ = attempt(agent, judge, task, reflections, min_score, **sampling)
        if ok:
            correct.append(trajectory.model_copy(update={"meta": {**trajectory.meta, "sample": n}}))
    kept = correct
    if keep == "shortest" and correct:
        kept = [min(correct, key=lambda t: (t.steps, sum(len(m.content or "") for m in t.messages)))]
    # how many records this task has in the output: --resume redoes a task that has fewer
    kept = [t.model_copy(update={"meta": {**t.meta, "kept_of": len(kept)}}) for t in kept]
    return Outcome(kept=kept, samples=samples, correct=len(correct))


@dataclass
class RunStats:
    tasks: int = 0
    solved: int = 0
    kept: int = 0


def run(
    pipe: Pipe,
    agent: ResearchAgent,
    judge: ChecklistJudge,
    rejection: Rejection = Rejection(),
    *,
    concurrency: int = 1,
) -> RunStats:
    """`collect` over every task of `pipe`, `concurrency` at a time: the kept trajectories are written,
    and a task with none goes to the rejects file (the line it was read from)."""
    stats = RunStats()

    def solve(item: tuple[Task, Any]) -> tuple[Task, Any, Outcome]:
        task, origin = item
        return task, origin, collect(agent, judge, task, rejection)

    for task, origin, outcome in progress(
        ordered_map(solve, pipe.located(Task), concurrency), "trajectories"
    ):
        stats.tasks += 1
        if not outcome.kept:
            pipe.reject(origin, f"task {task.id}: no correct trajectory in {rejection.samples} samples")
            continue
        stats.solved += 1
        for trajectory in outcome.kept:
            pipe.write(trajectory)
            stats.kept += 1
    return stats
