"""A step's rollouts: which tasks it draws, the agent's runs of them (every task `group` times in a row), and
their rewards; on several ranks dealt out and gathered, so every rank holds all of them. Asynchronously
(`max_staleness` > 0) they come from a `RolloutStream` that samples while the trainer updates. A rollout's
turns become the update's `Sequence`s: the tokens of each forward pass, and which of them were sampled.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as torch_dist

from dr_core.concurrency import ordered_map
from dr_core.records import Task, Trajectory
from dr_train import seeds
from dr_train.chat import IGNORE
from dr_train.config import RLConfig
from dr_train.distributed import Dist
from dr_train.rl.engines import sampling_seed
from dr_train.rl.policy import Recording, record_turns
from dr_train.rl.rewards import Rewarder, Scored
from dr_train.rl.stream import RolloutStream

if TYPE_CHECKING:
    from dr_agent.agent import ResearchAgent


@dataclass
class Rollout:
    task: Task
    trajectory: Trajectory
    turns: list[Any]
    scored: Scored | None = None  # set once the step's rollouts are rewarded

    @property
    def reward(self) -> float | None:
        """The reward it trains on; None when it has none (the judge abstained): it is dropped."""
        return None if self.scored is None else self.scored.reward

    @property
    def tool_calls(self) -> int:
        return sum(len(m.tool_calls) for m in self.trajectory.messages if m.role == "assistant")


@dataclass
class Sequence:
    """One forward pass of a rollout: tokens, and the sampled ones to train on (aligned to predictions)."""

    rollout: int
    input_ids: list[int]
    targets: list[int]  # targets[j] is input_ids[j + 1] where that token was sampled, IGNORE elsewhere
    old_logprobs: Any = None
    ref_logprobs: Any = None
    old_values: Any = None
    advantages: Any = None
    returns: Any = None
    # the rollout engine's log-probability of each sampled token, aligned to `targets` (NaN elsewhere);
    # None when the policy sampled in this process
    engine_logprobs: list[float] | None = None
    tis_weights: Any = None

    @property
    def actions(self) -> int:
        return sum(1 for t in self.targets if t != IGNORE)


def sequences_of(turns: list[Any], rollout: int) -> list[Sequence]:
    """The rollout's turns as few forward passes as possible: a turn whose prompt continues the previous
    turn's prompt and sample token for token extends it; otherwise (the agent compacted or rewrote the
    history) it starts a new one."""
    out: list[Sequence] = []
    for turn in turns:
        if not turn.response:
            continue
        current = out[-1] if out else None
        if current is not None and turn.prompt[: len(current.input_ids)] == current.input_ids:
            context = turn.prompt[len(current.input_ids) :]
            start = len(current.input_ids)
            current.input_ids += context + turn.response
        else:
            current = Sequence(rollout, list(turn.prompt) + list(turn.response), [])
            out.append(current)
            start = 0
            context = turn.prompt
        targets = current.targets
        # the prediction at position j is of token j + 1: the sampled tokens are predicted from the
        # position before each of them
        first = start + len(context)
        targets += [IGNORE] * (len(current.input_ids) - 1 - len(targets))
        for j in range(first - 1, len(current.input_ids) - 1):
            targets[j] = current.input_ids[j + 1]
        if turn.logprobs is not None:
            engine = current.engine_logprobs
            if engine is None:
                engine = current.engine_logprobs = []
            engine += [math.nan] * (first - 1 - len(engine))
            engine += list(turn.logprobs)
    for seq in out:
        seq.targets += [IGNORE] * (len(seq.input_ids) - len(seq.targets))
        if seq.engine_logprobs is not None:
            seq.engine_logprobs += [math.nan] * (len(seq.input_ids) - len(seq.engine_logprobs))
    return out


@dataclass
class Collected:
    """A step's rollouts (every rank holds all of them, rewarded), and how getting them went."""

    rollouts: list[Rollout]
    rollout_s: float  # the agent's runs: sampling and tools (asynchronously, the trainer's wait)
    judge_s: float  # rewarding them (the judge's calls, at once)
    staleness: dict[str, Any]  # asynchronously: tokens per version lag, groups dropped; else empty


@dataclass
class Rollouts:
    """The step's tasks and the agent's rewarded runs of them. `local`: the policy samples in this process,
    so the torch seed decides its draws (an engine takes the seed with each request)."""

    agent: ResearchAgent
    rewarder: Rewarder
    tasks: list[Task]
    config: RLConfig
    dist: Dist
    local: bool

    def step_tasks(self, step: int) -> list[Task]:
        rng = random.Random(seeds.step_tasks(self.config.seed, step))
        count = min(self.config.tasks_per_step, len(self.tasks))
        return rng.sample(self.tasks, count)

    def jobs(self, step: int) -> list[Task]:
        """The step's runs: every task `group` times in a row."""
        return [task for task in self.step_tasks(step) for _ in range(self.config.group)]

    def one(self, step: int, index: int, task: Task) -> Rollout:
        """The agent's run of the step's index-th job, its model calls recorded."""
        seed = None
        if self.config.concurrency == 1:
            # one rollout at a time: each samples from a seed of its own, so a run's rollouts are the same
            # on any number of ranks (here, or in the engine)
            seed = seeds.rollout(self.config.seed, step, index)
            if self.local:
                torch.manual_seed(seed)
        recording = Recording()
        with record_turns(recording), sampling_seed(seed):
            trajectory = self.agent.run(
                task.question, task_id=task.id, temperature=self.config.temperature, top_p=self.config.top_p
            )
        return Rollout(task, trajectory, recording.turns)

    def score(self, rollouts: list[Rollout]) -> float:
        """Reward `rollouts` in place (the judge's calls at once); the judge's time."""
        scored, judge_s = self.rewarder.score_all(
            [(r.task, r.trajectory.final, r.trajectory.citations) for r in rollouts]
        )
        for rollout, score in zip(rollouts, scored, strict=True):
            rollout.scored = score
        return judge_s

    def collect(self, step: int) -> Collected:
        """The step's rollouts, sampled now; on several ranks each runs every world-th one and all of them
        are gathered on every rank."""
        started = time.perf_counter()
        rank, world = self.dist.rank, self.dist.world
        torch.manual_seed(seeds.rank_rollouts(self.config.seed, step, rank))
        jobs = list(enumerate(self.jobs(step)))
        mine = list(ordered_map(lambda job: self.one(step, *job), jobs[rank::world], self.config.concurrency))
        # rewarded together once they are all in, the judge's calls batched and timed apart
        judge_s = self.score(mine)
        if world > 1:
            shares: list[Any] = [None] * world
            torch_dist.all_gather_object(shares, mine)
            mine = [shares[index % world][index // world] for index in range(len(jobs))]
        return Collected(mine, time.perf_counter() - started - judge_s, judge_s, {})

    def stream(self, start: int) -> RolloutStream:
        """Asynchronous rollouts (max_staleness > 0) from step `start` on, sampled from now on while the
        trainer updates."""
        return RolloutStream(
            self.one,
            self.score,
            self.step_tasks,
            start=start,
            steps=self.config.steps,
            group=self.config.group,
            max_staleness=self.config.max_staleness,
            concurrency=self.config.concurrency,
        )

    def taken(self, stream: RolloutStream | None, step: int) -> Collected:
        """Step `step`'s rollouts from the asynchronous stream (the first rank's; every rank gets them), and
        how stale they were: tokens per version lag, groups dropped, the trainer's wait."""
        got: list[Any] = [None]
        if stream is not None:
            taken = stream.take(step)
            rollouts = [r for g in taken.groups for r in g.rollouts]
            lags: dict[int, int] = {}
            for r in rollouts:
                for turn in r.turns:
                    for version in turn.versions or []:
                        lags[step - version] = lags.get(step - version, 0) + 1
            staleness = {"staleness": {str(k): lags[k] for k in sorted(lags)}, "stale_groups": taken.dropped}
            # the judge ran while the trainer waited
            got = [Collected(rollouts, taken.wait_s, sum(g.judge_s for g in taken.groups), staleness)]
        if self.dist.world > 1:
            torch_dist.broadcast_object_list(got, src=0)
        return got[0]
