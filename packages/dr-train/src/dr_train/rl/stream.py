"""Asynchronous RL's rollouts: sampled in the engines while the trainer updates, at most K policy versions
behind the update (bounded staleness, as AReaL's `max_head_offpolicyness`).

`concurrency` worker threads research tasks group by group, in the run's task order (step t's tasks, then
step t+1's). A group starts only while fewer than (v + K + 1 - s)·B groups have started, v being the version
the engines hold (the updates applied), s the step the run started at and B the tasks per step, plus one
for every group dropped. With K = 0 sampling therefore waits for each update; with K = 1 the next step's
rollouts are sampled during this step's update. Each group is rewarded as soon as its last rollout is in
(the judge's calls overlap the sampling too).

The trainer's step t takes the first B groups to finish, in the order they finished, so a long rollout holds
up only its own group. A group whose oldest token was sampled more than K versions before t (a group that
took longer than others started after it) is dropped and counted, and another starts in its place.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dr_core.log import logger
from dr_core.records import Task
from dr_train.rl.engines import Stopped


@dataclass
class Group:
    """One task's rollouts, in the order they were asked for."""

    index: int  # the order groups started in
    step: int  # the step whose tasks it was drawn from
    task: Task
    rollouts: list[Any] = field(default_factory=list)
    judge_s: float = 0.0

    def oldest(self) -> int | None:
        """The oldest policy version any of its tokens was sampled by (None: it sampled no token)."""
        versions = [v for r in self.rollouts for t in r.turns for v in (t.versions or [])]
        return min(versions) if versions else None


@dataclass
class Taken:
    """What the trainer's step got: its groups, and how it got them."""

    groups: list[Group]
    dropped: int  # groups too stale to train on, since the last step
    wait_s: float  # time the trainer waited for them


class RolloutStream:
    """Rollouts sampled ahead of the update. `rollout(step, index, task)` samples one (its turns record each
    token's version), `score(rollouts)` rewards one group's rollouts in place and returns the judge's time;
    `tasks(step)` is a step's tasks. Errors in a worker are raised by `take()`."""

    def __init__(
        self,
        rollout: Callable[[int, int, Task], Any],
        score: Callable[[list[Any]], float],
        tasks: Callable[[int], list[Task]],
        *,
        start: int,
        steps: int,
        group: int,
        max_staleness: int,
        concurrency: int,
    ) -> None:
        self._rollout = rollout
        self._score = score
        self._order = self._task_order(tasks, start)
        self.start = start
        self.steps = steps
        self.group = group
        self.max_staleness = max_staleness
        self.batch = len(tasks(start)) if start < steps else 0
        self.version = start
        self._cond = threading.Condition()
        self._started = 0  # groups started
        self._dropped = 0  # groups dropped, in all
        self._dropped_since = 0
        self._jobs: list[tuple[Group, int]] = []  # (group, member) waiting for a worker
        self._filled: dict[int, int] = {}  # group index -> rollouts in
        self._done: list[Group] = []  # rewarded groups, in the order they finished
        self._error: BaseException | None = None
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"rollout-{i}", daemon=True) for i in range(concurrency)
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _task_order(tasks: Callable[[int], list[Task]], start: int) -> Iterator[tuple[int, Task]]:
        step = start
        while True:
            for task in tasks(step):
                yield step, task
            step += 1

    # ---- the trainer's side ----------------------------------------------------------------------------

    def advance(self, version: int) -> None:
        """The engines now hold `version`: more groups may start."""
        with self._cond:
            self.version = version
            self._cond.notify_all()

    def take(self, step: int) -> Taken:
        """The first `batch` groups to finish that are at most K versions behind `step`; waits for them."""
        started = time.perf_counter()
        groups: list[Group] = []
        with self._cond:
            while len(groups) < self.batch:
                if self._error is not None:
                    raise self._error
                if not self._done:
                    self._cond.wait()
                    continue
                ready = self._done.pop(0)
                oldest = ready.oldest()
                if oldest is not None and step - oldest > self.max_staleness:
                    self._dropped += 1
                    self._dropped_since += 1
                    logger.info(
                        "dropped a group of step %d's tasks: its oldest token is %d versions behind step %d",
                        ready.step,
                        step - oldest,
                        step,
                    )
                    self._cond.notify_all()  # another group may start in its place
                    continue
                groups.append(ready)
            dropped, self._dropped_since = self._dropped_since, 0
        return Taken(groups, dropped, time.perf_counter() - started)

    def close(self) -> None:
        """Start no more groups; workers leave once their rollout returns (stop the engines first, so that
        the ones sampling return at once)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=60)

    # ---- the workers' side -----------------------------------------------------------------------------

    def _limit(self) -> int:
        """How many groups may have started by now."""
        ahead = (self.version - self.start + self.max_staleness + 1) * self.batch + self._dropped
        return min(ahead, (self.steps - self.start) * self.batch + self._dropped)

    def _next(self) -> tuple[Group, int] | None:
        """The next rollout to sample (starting a group when it may), or None once closed."""
        with self._cond:
            while True:
                if self._closed or self._error is not None:
                    return None
                if self._jobs:
                    return self._jobs.pop(0)
                if self._started < self._limit():
                    step, task = next(self._order)
                    group = Group(self._started, step, task, [None] * self.group)
                    self._started += 1
                    self._filled[group.index] = 0
                    self._jobs = [(group, member) for member in range(self.group)]
                    continue
                self._cond.wait()

    def _work(self) -> None:
        while (job := self._next()) is not None:
            group, member = job
            try:
                index = (group.index % self.batch) * self.group + member  # as in the step's synchronous order
                group.rollouts[member] = self._rollout(group.step, index, group.task)
                with self._cond:
                    self._filled[group.index] += 1
                    complete = self._filled[group.index] == self.group
                if complete:
                    group.judge_s = self._score(group.rollouts)
                    with self._cond:
                        del self._filled[group.index]
                        self._done.append(group)
                        self._cond.notify_all()
            except Stopped:
                return
            except BaseException as exc:  # raised in the trainer's thread by take()
                with self._cond:
                    if self._error is None:
                        self._error = exc
                    self._cond.notify_all()
                return
