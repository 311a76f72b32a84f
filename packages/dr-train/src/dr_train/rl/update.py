"""RL's update: a step's rewarded rollouts as sequences, their log-probabilities before the update (and the
reference's, and the value head's), the algorithm's advantages, then `epochs` passes in minibatches of
`minibatch` sequences, one optimizer step each, through the `TrainBackend`. Log-probabilities come from
dr_kernels' fused head (no logits).

On several ranks every rank holds the whole policy and knows every sequence; each computes every world-th
sequence's starting log-probabilities (gathered to all), and trains on every world-th one of a minibatch,
weighted so that the ranks' gradients, which DeepSpeed averages, add up to the one-process minibatch's.
Every rank runs the same number of passes per optimizer step (a rank short of sequences runs a zero-weight
one), which ZeRO's gradient reduction needs.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from dr_kernels.attention import cpu_length
from dr_train import seeds
from dr_train.backend import DeepSpeedSettings, OptimSettings, TrainBackend, make_backend
from dr_train.chat import IGNORE
from dr_train.config import RLConfig
from dr_train.distributed import Dist
from dr_train.rl.algorithms import LossStats, algorithm
from dr_train.rl.rollouts import Rollout, Sequence, sequences_of


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


def frozen_copy(model: Any) -> Any:
    reference = copy.deepcopy(model)
    reference.eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


@dataclass
class Prepared:
    """A step's sequences ready to train on; how many groups were left out as flat (GRPO: one reward for
    the whole group); the engine's log-probability gap, for the step's metrics."""

    sequences: list[Sequence]
    flat_groups: int
    gap: dict[str, float]


class PolicyUpdate:
    """The policy (and PPO's value head) with its optimizer side, and how a step's rollouts train it."""

    def __init__(
        self,
        model: Any,
        reference: Any,
        config: RLConfig,
        dist: Dist,
        device: Any,
        deepspeed: DeepSpeedSettings,
    ) -> None:
        self.model = model
        self.reference = reference
        self.config = config
        self.dist = dist
        self.device = device
        self.algorithm = algorithm(config)
        self.value_head = ValueHead.build(model.config.hidden_size) if self.algorithm.value_head else None
        if reference is not None:
            reference.to(device)
        # every rank runs this many passes per optimizer step: its share of a minibatch, padded
        self.micro_steps = math.ceil(config.minibatch / dist.world)
        self.backend: TrainBackend = make_backend(
            model,
            OptimSettings(config.lr, weight_decay=config.weight_decay, clip=config.grad_clip),
            deepspeed,
            device=device,
            micro_steps=self.micro_steps,
            world=dist.world,
            extra=self.value_head,
            rollouts=True,
        )

    def prepare(self, rollouts: list[Rollout]) -> Prepared:
        """The sequences to train on, with their starting log-probabilities and advantages."""
        config = self.config
        self.model.eval()  # the log-probabilities the update starts from, as the policy samples
        sequences = [s for i, r in enumerate(rollouts) for s in sequences_of(r.turns, i)]
        # a rollout without a reward (its judge abstained) teaches nothing: it leaves its group
        sequences = [s for s in sequences if s.actions and rollouts[s.rollout].reward is not None]
        rewards = [r.reward for r in rollouts]
        flat = self.algorithm.flat(rewards)
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
        gap = self.engine_gap(sequences)
        self.algorithm.advantages(sequences, rewards)
        return Prepared(sequences, flat_groups=len(flat), gap=gap)

    def engine_gap(self, sequences: list[Sequence]) -> dict[str, float]:
        """How far the engine's log-probabilities of the sampled tokens are from the trainer's (for the
        step's metrics), and each token's truncated importance weight when `tis_cap` is set."""
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
        if gaps:
            every = torch.cat(gaps)
            if every.numel():
                return {"logp_gap_mean": float(every.mean()), "logp_gap_max": float(every.max())}
        return {}

    def train(self, sequences: list[Sequence], step: int) -> dict[str, float]:
        """`epochs` passes over step `step`'s sequences in minibatches of `minibatch` sequences, one
        optimizer step each; the loss statistics, per trained token."""
        config = self.config
        rank, world = self.dist.rank, self.dist.world
        self.model.train()
        stats = LossStats()
        rng = random.Random(seeds.minibatches(config.seed, step))
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
                    loss = self.loss(seq, stats if real else None)
                    self.backend.backward(loss * weight)
                self.backend.step()
        if world > 1:
            summed = stats.tensor()
            torch_dist.all_reduce(summed)
            stats = LossStats.of(summed)
        return stats.means()

    def loss(self, seq: Sequence, stats: LossStats | None) -> Any:
        """The sequence's summed token loss, as its algorithm computes it; adds to `stats`."""
        logprobs, values = forward(self.model, seq, self.config.kernels, self.value_head)
        loss, parts = self.algorithm.loss(seq, logprobs, values)
        if stats is not None:
            stats.add(parts)
        return loss
