"""`dr train rl`: GRPO or PPO on research tasks, with rollouts through the real agent loop and tools.

One step: pick tasks, let the policy research each `group` times (the agent's search/open/answer tools over
the index, under its step and token budgets), reward each run (dr_train.rewards: the exact answer for
question tasks; for report tasks the checklist score by the rules or by a judge model, with the rules'
truth logged beside it), then update on the tokens the policy sampled; prompts and tool results are
context, never trained on. A run the judge abstained on has no reward and is left out of its group. The
policy's log-probabilities come from dr_kernels' fused head (no logits).

On several processes (`--nproc N`, DeepSpeed ZeRO 0-2) every rank holds the whole policy: the step's
rollouts are dealt out over the ranks and gathered again, so every rank sees all of them and computes the
same advantages; each minibatch's sequences are dealt out the same way, and DeepSpeed averages the
gradients. Every rank runs the same number of passes per optimizer step (a rank short of sequences runs a
zero-weight one), which ZeRO's gradient reduction needs.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as torch_dist

from dr_core.concurrency import ordered_map
from dr_core.errors import InputError
from dr_core.llm import ChatModel
from dr_core.log import logger, progress
from dr_core.records import Task, Trajectory
from dr_kernels.attention import cpu_length
from dr_train import checkpoint, seeds
from dr_train.algorithms import LossStats, algorithm
from dr_train.backend import DeepSpeedSettings, OptimSettings, TrainBackend, make_backend
from dr_train.chat import IGNORE
from dr_train.config import RLConfig
from dr_train.distributed import Dist, barrier
from dr_train.policy import LocalPolicy, Recording, record_turns
from dr_train.rewards import Rewarder, Scored, reward_metrics
from dr_train.rollout import (
    EngineError,
    EnginePolicy,
    VLLMServers,
    probe_tokens,
    sampling_seed,
    write_engine_weights,
)
from dr_train.stream import RolloutStream

if TYPE_CHECKING:
    from dr_agent.agent import ResearchAgent

# what a dr that did not yet record a setting in its checkpoints did, for resuming their runs
UNRECORDED: dict[str, Any] = {
    "skip_flat_groups": False,
    "reward": "auto",
    "reward_mode": "strict",
    "max_staleness": 0,
    "sync_pause": "abort",
}


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


class ValueHead:
    """PPO's critic: a linear read-out of the policy's last hidden state (the trunk is shared)."""

    @staticmethod
    def build(hidden: int) -> Any:
        head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        return head


def forward(model: Any, seq: Sequence, kernels: bool, value_head: Any = None) -> tuple[Any, Any]:
    """(log-probabilities, values) at the sampled tokens of `seq`, differentiable."""
    device = next(model.parameters()).device
    length = size = len(seq.input_ids)
    if device.type == "cpu":
        # rounded up for the CPU's per-shape kernel caches (dr_kernels.attention.CPU_SHAPE_MULTIPLE); the
        # padding comes after every real token, so under the causal mask it changes none of them
        size = cpu_length(length)
    pad = model.config.pad_token_id or 0
    ids = torch.tensor([[*seq.input_ids, *[pad] * (size - length)]], device=device)
    positions = torch.arange(size, device=device)[None]
    hidden = model.model(input_ids=ids, position_ids=positions).last_hidden_state[0, :length]
    targets = torch.tensor(seq.targets, device=device)
    mask = targets != IGNORE
    head = model.lm_head
    if kernels:
        from dr_kernels import label_logprobs

        logprobs = label_logprobs(hidden[mask], head.weight, targets[mask], bias=head.bias)
    else:
        logits = head(hidden[mask]).float()
        logprobs = torch.log_softmax(logits, -1).gather(-1, targets[mask][:, None])[:, 0]
    values = None
    if value_head is not None:
        values = value_head(hidden[mask].float()).squeeze(-1)
    return logprobs, values


class RLTrainer:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        reference: Any,
        agent: ResearchAgent,
        rewarder: Rewarder,
        tasks: list[Task],
        config: RLConfig,
        resume_from: Path | None = None,
        reference_path: str | None = None,
        dist: Dist | None = None,
        device: Any = None,
        deepspeed: DeepSpeedSettings | None = None,
        engines: VLLMServers | None = None,
        sync_tolerance: float = 0.1,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        # what a resume must match: the recipe's settings where it gives them, else the trainer's own
        self.settings = settings if settings is not None else config.resume_keys()
        self.tokenizer = tokenizer
        self.reference = reference
        self.agent = agent
        self.rewarder = rewarder
        self.judge_s = 0.0  # the last step's judging time, on this rank
        self.tasks = tasks
        self.config = config
        self.out = Path(config.out)
        self.reference_path = reference_path
        self.dist = dist or Dist()
        self.step = 0
        if config.kernels:
            from dr_kernels import patch

            patch(model)
            if reference is not None:
                patch(reference)
        model.config.use_cache = True
        # rollouts and updates on one device per rank: its GPU when there is one
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.algorithm = algorithm(config)
        self.value_head = ValueHead.build(model.config.hidden_size) if self.algorithm.value_head else None
        if reference is not None:
            reference.to(self.device)
        # every rank runs this many passes per optimizer step: its share of a minibatch, padded
        self.micro_steps = math.ceil(config.minibatch / self.dist.world)
        self.backend: TrainBackend = make_backend(
            model,
            OptimSettings(config.lr, weight_decay=config.weight_decay, clip=config.grad_clip),
            deepspeed or DeepSpeedSettings(),
            device=self.device,
            micro_steps=self.micro_steps,
            world=self.dist.world,
            extra=self.value_head,
            rollouts=True,
        )
        # where the policy samples: in vLLM engines (weights pushed after every update), or here
        self.engines = engines
        self.nccl: Any = None  # dr_train.weight_sync.NcclSync, at the first sync with --weight-sync nccl
        self.sync_tolerance = sync_tolerance
        self.gap: dict[str, float] = {}
        self.flat_groups = 0  # GRPO groups of the last step left out for having one reward
        self.policy: ChatModel
        if engines is not None:
            context = int(getattr(model.config, "max_position_embeddings", 32768))
            self.policy = EnginePolicy(engines, tokenizer, context)
        else:
            self.policy = LocalPolicy(model, tokenizer)
        agent.llm = self.policy
        if resume_from is not None:
            self._load(resume_from)

    # ---- rollouts ----------------------------------------------------------------------------------

    def step_tasks(self, step: int) -> list[Task]:
        rng = random.Random(seeds.step_tasks(self.config.seed, step))
        count = min(self.config.tasks_per_step, len(self.tasks))
        return rng.sample(self.tasks, count)

    def _rollout(self, job: tuple[int, int, Task]) -> Rollout:
        step, index, task = job
        seed = None
        if self.config.concurrency == 1:
            # one rollout at a time: each samples from a seed of its own, so a run's rollouts are the same
            # on any number of ranks (here, or in the engine)
            seed = seeds.rollout(self.config.seed, step, index)
            if self.engines is None:
                torch.manual_seed(seed)
        recording = Recording()
        with record_turns(recording), sampling_seed(seed):
            trajectory = self.agent.run(
                task.question, task_id=task.id, temperature=self.config.temperature, top_p=self.config.top_p
            )
        return Rollout(task, trajectory, recording.turns)

    def rollouts(self, step: int) -> list[Rollout]:
        """The step's rollouts, every task `group` times in a row; on several ranks each runs every
        world-th one and all of them are gathered on every rank."""
        rank, world = self.dist.rank, self.dist.world
        torch.manual_seed(seeds.rank_rollouts(self.config.seed, step, rank))
        self.model.eval()
        jobs = [(step, index, task) for index, task in enumerate(self._jobs(step))]
        mine = list(ordered_map(self._rollout, jobs[rank::world], self.config.concurrency))
        # rewarded together once they are all in, the judge's calls batched and timed apart
        self.judge_s = self._score(mine)
        if world == 1:
            return mine
        shares: list[Any] = [None] * world
        torch_dist.all_gather_object(shares, mine)
        return [shares[index % world][index // world] for index in range(len(jobs))]

    def _score(self, rollouts: list[Rollout]) -> float:
        """Reward `rollouts` in place (the judge's calls at once); the judge's time."""
        scored, judge_s = self.rewarder.score_all(
            [(r.task, r.trajectory.final, r.trajectory.citations) for r in rollouts]
        )
        for rollout, score in zip(rollouts, scored, strict=True):
            rollout.scored = score
        return judge_s

    def _stream(self) -> RolloutStream:
        """Asynchronous rollouts (max_staleness > 0), sampled from now on while the trainer updates."""
        return RolloutStream(
            lambda step, index, task: self._rollout((step, index, task)),
            self._score,
            self.step_tasks,
            start=self.step,
            steps=self.config.steps,
            group=self.config.group,
            max_staleness=self.config.max_staleness,
            concurrency=self.config.concurrency,
        )

    def taken(self, stream: RolloutStream | None, step: int) -> tuple[list[Rollout], dict[str, Any]]:
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
            info = {
                "staleness": {str(k): lags[k] for k in sorted(lags)},
                "stale_groups": taken.dropped,
                "wait_s": taken.wait_s,
                "judge_s": sum(g.judge_s for g in taken.groups),
            }
            got = [(rollouts, info)]
        if self.dist.world > 1:
            torch_dist.broadcast_object_list(got, src=0)
        return got[0]

    def _jobs(self, step: int) -> list[Task]:
        return [task for task in self.step_tasks(step) for _ in range(self.config.group)]

    # ---- update ------------------------------------------------------------------------------------

    def _prepare(self, rollouts: list[Rollout]) -> list[Sequence]:
        config = self.config
        self.model.eval()  # the log-probabilities the update starts from, as the policy samples
        sequences = [s for i, r in enumerate(rollouts) for s in sequences_of(r.turns, i)]
        # a rollout without a reward (its judge abstained) teaches nothing: it leaves its group
        sequences = [s for s in sequences if s.actions and rollouts[s.rollout].reward is not None]
        rewards = [r.reward for r in rollouts]
        flat = self.algorithm.flat(rewards)
        self.flat_groups = len(flat)
        sequences = [s for s in sequences if s.rollout // config.group not in flat]
        rank, world = self.dist.rank, self.dist.world
        with torch.no_grad():
            for seq in sequences[rank::world]:
                seq.old_logprobs, seq.old_values = forward(self.model, seq, config.kernels, self.value_head)
                if self.reference is not None and config.kl_coef:
                    seq.ref_logprobs, _ = forward(self.reference, seq, config.kernels)
        if world > 1:  # every rank computed every world-th sequence's; all of them go to every rank

            def cpu(t: Any) -> Any:
                return None if t is None else t.cpu()

            mine = [
                (cpu(s.old_logprobs), cpu(s.old_values), cpu(s.ref_logprobs)) for s in sequences[rank::world]
            ]
            shares: list[Any] = [None] * world
            torch_dist.all_gather_object(shares, mine)

            def here(t: Any) -> Any:
                return None if t is None else t.to(self.device)

            for index, seq in enumerate(sequences):
                old, values, ref = shares[index % world][index // world]
                seq.old_logprobs, seq.old_values, seq.ref_logprobs = here(old), here(values), here(ref)
        self._engine_gap(sequences)
        self.algorithm.advantages(sequences, rewards)
        return sequences

    def _engine_gap(self, sequences: list[Sequence]) -> None:
        """How far the engine's log-probabilities of the sampled tokens are from the trainer's (kept for
        the step's metrics), and each token's truncated importance weight when `tis_cap` is set."""
        gaps = []
        for seq in sequences:
            if seq.engine_logprobs is None:
                continue
            sampled = [lp for lp, t in zip(seq.engine_logprobs, seq.targets, strict=True) if t != IGNORE]
            engine = torch.tensor(sampled, dtype=torch.float32, device=seq.old_logprobs.device)
            known = ~torch.isnan(engine)
            gaps.append((seq.old_logprobs.float() - engine)[known].abs())
            if self.config.tis_cap is not None:
                ratio = torch.exp(
                    seq.old_logprobs.float() - torch.where(known, engine, seq.old_logprobs.float())
                )
                seq.tis_weights = ratio.clamp(max=self.config.tis_cap).detach()
        self.gap = {}
        if gaps:
            every = torch.cat(gaps)
            if every.numel():
                self.gap = {"logp_gap_mean": float(every.mean()), "logp_gap_max": float(every.max())}

    def update(self, sequences: list[Sequence]) -> dict[str, float]:
        """`epochs` passes over the step's sequences in minibatches of `minibatch` sequences, one optimizer
        step each. Every rank knows every sequence; on several ranks each trains on every world-th one of a
        minibatch, and the weights make the ranks' gradients add up to the one-process minibatch's."""
        config = self.config
        rank, world = self.dist.rank, self.dist.world
        self.model.train()
        stats = LossStats()
        rng = random.Random(seeds.minibatches(config.seed, self.step))
        rollout_tokens: dict[int, int] = {}
        for seq in sequences:
            rollout_tokens[seq.rollout] = rollout_tokens.get(seq.rollout, 0) + seq.actions
        for _ in range(config.epochs):
            order = list(sequences)
            rng.shuffle(order)
            for start in range(0, len(order), config.minibatch):
                batch = order[start : start + config.minibatch]
                tokens = sum(s.actions for s in batch)
                rollouts = len({s.rollout for s in batch})
                passes: list[Sequence | None] = list(batch[rank::world])
                if self.backend.lockstep:
                    passes += [None] * (self.micro_steps - len(passes))
                for given in passes:
                    # a rank short of sequences runs one of the batch with weight 0 (no gradient), so
                    # that every rank takes part in each gradient reduction
                    real = given is not None
                    seq = given or batch[0]
                    if config.loss_norm == "token":
                        weight = 1 / tokens
                    else:
                        weight = 1 / (rollout_tokens[seq.rollout] * rollouts)
                    # DeepSpeed averages gradients over the ranks; the minibatch's loss is their sum
                    weight = weight * world if real else 0.0
                    loss = self._loss(seq, stats if real else None)
                    self.backend.backward(loss * weight)
                self.backend.step()
        if world > 1:
            summed = stats.tensor()
            torch_dist.all_reduce(summed)
            stats = LossStats.of(summed)
        return stats.means()

    def _loss(self, seq: Sequence, stats: LossStats | None) -> Any:
        """The sequence's summed token loss, as its algorithm computes it; adds to `stats`."""
        logprobs, values = forward(self.model, seq, self.config.kernels, self.value_head)
        loss, parts = self.algorithm.loss(seq, logprobs, values)
        if stats is not None:
            stats.add(parts)
        return loss

    # ---- the loop ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        main = self.dist.main
        metrics = checkpoint.MetricLog(self.out / "metrics.jsonl", main)
        metrics.resume(self.step)
        record: dict[str, Any] = {}
        steps = range(self.step, self.config.steps)
        if self.engines is not None and len(steps):
            self.sync_engines()  # whatever they held: from now on, the trainer's weights
        # asynchronous: sampling goes on during the update, on the first rank
        stream = self._stream() if self.config.max_staleness and main and len(steps) else None
        try:
            for step in progress(steps, f"rl ({self.config.algo})", total=len(steps)):
                record = self._step(step, stream)
                if main:
                    metrics.write(record)
                    self._log(record)
                if (
                    self.config.save_every
                    and self.step % self.config.save_every == 0
                    and self.step < self.config.steps
                ):
                    self.save(f"checkpoint-{self.step}")
        finally:
            if stream is not None:
                assert self.engines is not None
                self.engines.stop()  # the rollouts still sampling are abandoned
                stream.close()
        self.save(None)
        return {"out": str(self.out), "steps": self.step, **{k: v for k, v in record.items() if k != "step"}}

    def _step(self, step: int, stream: RolloutStream | None) -> dict[str, Any]:
        """One step: its rollouts (sampled now, or taken from the asynchronous stream), the update, and the
        sync of the engines; its metrics record."""
        started = time.perf_counter()
        idle = self.engines.idle_s() if self.engines is not None else 0.0
        lag: dict[str, Any] = {}
        if self.config.max_staleness:
            rollouts, lag = self.taken(stream, step)
            self.judge_s = lag.pop("judge_s")
            rollout_s = lag.pop("wait_s") + self.judge_s  # the trainer's wait (the judge ran meanwhile)
        else:
            rollouts = self.rollouts(step)
            rollout_s = time.perf_counter() - started
        self.gap = {}
        updating = time.perf_counter()
        sequences = self._prepare(rollouts)
        stats = self.update(sequences) if sequences else {}
        update_s = time.perf_counter() - updating
        kept = [r.reward for r in rollouts if r.reward is not None]
        rewards = torch.tensor(kept, dtype=torch.float64)
        scored = [r.scored for r in rollouts if r.scored is not None]
        self.step = step + 1
        synced = {}
        if self.engines is not None and self.step < self.config.steps:
            synced = self.sync_engines()
            if stream is not None:
                stream.advance(self.step)
        timing = {"update_s": round(update_s, 2)}
        if self.engines is not None:
            timing["engine_idle_s"] = round(self.engines.idle_s() - idle, 2)
        return {
            "step": self.step,
            # over the rollouts with a reward (None when the judge abstained on all of them)
            "reward_mean": round(float(rewards.mean()), 4) if kept else None,
            "reward_std": round(float(rewards.std(unbiased=False)), 4) if kept else None,
            "solved": round(float((rewards >= 0.5).float().mean()), 4) if kept else None,
            "response_tokens": round(
                sum(len(t.response) for r in rollouts for t in r.turns) / len(rollouts), 1
            ),
            "tool_calls": round(sum(r.tool_calls for r in rollouts) / len(rollouts), 2),
            "rollouts": len(rollouts),
            # rollouts without a reward (the judge abstained), left out of their groups
            "dropped": len(rollouts) - len(kept),
            **reward_metrics(scored, self.rewarder.source == "judge"),
            "trained_tokens": sum(s.actions for s in sequences),
            "flat_groups": self.flat_groups,
            **lag,
            **{k: round(v, 6) for k, v in stats.items()},
            **{k: round(v, 6) for k, v in self.gap.items()},
            **{k: round(v, 6) for k, v in synced.items()},
            "rollout_s": round(rollout_s - self.judge_s, 2),
            "judge_s": round(self.judge_s, 2),
            **timing,
            "step_s": round(time.perf_counter() - started, 2),
        }

    def _log(self, record: dict[str, Any]) -> None:
        logger.info(
            "rl step %d/%d reward %s, %.1f tool calls, kl %.4f%s%s",
            record["step"],
            self.config.steps,
            "none (the judge abstained on every rollout)"
            if record["reward_mean"] is None
            else f"{record['reward_mean']:.3f} ± {record['reward_std']:.3f}",
            record["tool_calls"],
            record.get("kl", 0.0),
            f", judge {record['reward_judge']:.3f} vs true {record['reward_true']:.3f}"
            if "reward_judge" in record and "reward_true" in record
            else "",
            f", staleness {record['staleness']}, {record['stale_groups']} stale groups dropped"
            if "staleness" in record
            else "",
        )

    # ---- the rollout engines ---------------------------------------------------------------------

    def sync_engines(self) -> dict[str, float]:
        """Push the policy into every rollout engine (the first rank writes it; every engine reloads it),
        then check each holds it: its log-probabilities of a probe sequence against the trainer's."""
        assert self.engines is not None
        started = time.perf_counter()
        version = f"step-{self.step}"
        if self.dist.main:
            pause = self.config.sync_pause if self.config.max_staleness else None
            if self.config.weight_sync == "nccl":
                if self.nccl is None:
                    from dr_train.weight_sync import NcclSync

                    self.nccl = NcclSync(self.engines.urls, self.model)
                self.engines.sync(None, version, self.step, pause, push=self.nccl.send)
            else:
                folder = write_engine_weights(self.model, self.tokenizer, engine_folder(self.out))
                self.engines.sync(folder, version, self.step, pause)
            probe = probe_tokens(self.tokenizer)
            with torch.no_grad():
                mine = forward(self.model, Sequence(-1, probe, [*probe[1:], IGNORE]), self.config.kernels)[0]
            worst = 0.0
            for url in self.engines.urls:
                theirs = torch.tensor(self.engines.prompt_logprobs(url, probe), device=mine.device)
                gap = float((mine.float() - theirs).abs().max())
                worst = max(worst, gap)
                if gap > self.sync_tolerance:
                    raise EngineError(
                        f"rollout engine {url} does not hold the trainer's weights after the sync to "
                        f"{version}: its log-probabilities of a probe differ by up to {gap:.4f} "
                        f"(tolerance {self.sync_tolerance}). Start the engine with the trainer's dtype "
                        "(--dtype float32; vLLM's CPU build computes float32 checkpoints in bfloat16 "
                        "otherwise), from a folder written by dr_train.rollout.write_engine_weights (an "
                        "output layer tied to the embeddings is not refreshed by vLLM's reload)"
                    )
            logger.info("rollout engines hold %s (probe |Δ logp| ≤ %.2e)", version, worst)
        barrier(self.dist)
        if not self.dist.main:
            return {}
        return {"sync_s": time.perf_counter() - started, "sync_gap_max": worst}

    # ---- checkpoints -------------------------------------------------------------------------------

    def save(self, name: str | None) -> None:
        """`OUT/NAME` (or the final model into `OUT`): the policy as a Hugging Face folder, its tokenizer,
        the optimizer (DeepSpeed's sharded state on several ranks), the value head, RNG and state."""
        value_head = self.value_head

        def extra(folder: Path) -> None:
            if value_head is not None:
                torch.save(value_head.state_dict(), folder / "value_head.pt")

        state = {
            "stage": "rl",
            "algo": self.config.algo,
            "step": self.step,
            "total_steps": self.config.steps,
            "reference": self.reference_path,
            "world": self.dist.world,
            "deepspeed": self.backend.sharded,
            "settings": self.settings,
        }
        checkpoint.save_run(
            self.out,
            name,
            dist=self.dist,
            backend=self.backend,
            module=self.model,
            tokenizer=self.tokenizer,
            state=state,
            keep=self.config.keep,
            extra=extra,
        )

    def _load(self, folder: Path) -> None:
        state = checkpoint.read_state(folder)
        sharded = bool(state.get("deepspeed"))
        if sharded != self.backend.sharded or (sharded and state.get("world", 1) != self.dist.world):
            ran = f"DeepSpeed on {state.get('world', 1)} ranks" if sharded else "without DeepSpeed"
            now = f"DeepSpeed on {self.dist.world} ranks" if self.backend.sharded else "without DeepSpeed"
            raise InputError(f"--resume: {folder} was trained {ran}; this run asks for {now}")
        checkpoint.check_settings(folder, state.get("settings", {}), self.settings, before=UNRECORDED)
        self.step = state["step"]
        self.backend.load(folder)
        if self.value_head is not None and not self.backend.sharded:
            self.value_head.load_state_dict(torch.load(folder / "value_head.pt", weights_only=True))
        checkpoint.set_rng_state(torch.load(folder / "rng.pt", weights_only=False))
        logger.info("resumed RL from %s at step %d", folder, self.step)


def engine_folder(out: Path) -> Path:
    """Where the policy is written for the rollout engines to load and reload."""
    return out / ".rollout-weights"


def frozen_copy(model: Any) -> Any:
    reference = copy.deepcopy(model)
    reference.eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference
