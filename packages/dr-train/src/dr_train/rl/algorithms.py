"""RL algorithms as objects: GRPO and PPO, each with `advantages()` over a step's sequences and `loss()` of
one sequence. The update asks the algorithm, never which one it holds. The arithmetic is
`dr_train.rl.math`'s.

GRPO: a rollout's advantage is its reward against its group's (the same task's other rollouts), for every
token it sampled; the KL to the reference policy is a loss term; groups whose rewards all agree teach
nothing and can be left out. PPO: per-token rewards (the outcome at the last token, minus the KL to the
reference at every token), advantages by GAE over a value head's estimates, whitened over the step; the
value head has its own clipped loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from dr_train.rl.math import (
    clipped_policy_loss,
    clipped_value_loss,
    flat_groups,
    gae,
    group_advantages,
    kl_k3,
    ppo_token_rewards,
)

if TYPE_CHECKING:
    from dr_train.config import RLConfig
    from dr_train.rl.rollouts import Sequence


@dataclass
class LossStats:
    """Sums over a step's trained tokens, for its metrics (averaged per token at the end)."""

    policy_loss: float = 0.0
    value_loss: float = 0.0
    kl: float = 0.0
    clip_fraction: float = 0.0
    tokens: float = 0.0

    NAMES = ("policy_loss", "value_loss", "kl", "clip_fraction", "tokens")

    def add(self, other: LossStats) -> None:
        for name in self.NAMES:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def tensor(self) -> torch.Tensor:
        """As one float64 tensor, to sum over ranks (all_reduce)."""
        return torch.tensor([getattr(self, n) for n in self.NAMES], dtype=torch.float64)

    @classmethod
    def of(cls, tensor: torch.Tensor) -> LossStats:
        return cls(*(float(x) for x in tensor.tolist()))

    def means(self) -> dict[str, float]:
        """Each sum over the trained tokens, as a per-token mean."""
        counted = max(self.tokens, 1.0)
        return {n: getattr(self, n) / counted for n in self.NAMES if n != "tokens"}


class GRPO:
    name = "grpo"
    value_head = False  # the group is the baseline

    def __init__(self, config: RLConfig) -> None:
        self.config = config

    def flat(self, rewards: list[float | None]) -> set[int]:
        """The groups to leave out of the update (`skip_flat_groups`): those whose rewards all agree."""
        return flat_groups(rewards, self.config.group) if self.config.skip_flat_groups else set()

    def advantages(self, sequences: list[Sequence], rewards: list[float | None]) -> None:
        """Each sequence's advantage: its rollout's group-normalized reward, on every sampled token."""
        tensor = torch.tensor([math.nan if r is None else r for r in rewards])
        advantages = group_advantages(tensor, self.config.group)
        for seq in sequences:
            seq.advantages = torch.full_like(seq.old_logprobs, float(advantages[seq.rollout]))

    def loss(self, seq: Sequence, logprobs: torch.Tensor, values: Any) -> tuple[torch.Tensor, LossStats]:
        """The sequence's summed token loss: the clipped policy loss (weighted by TIS when set), plus the KL
        to the reference policy."""
        pg, clipped, loss = _policy_loss(self.config, seq, logprobs)
        stats = LossStats(float(pg.detach().sum()), 0.0, 0.0, float(clipped.float().sum()), seq.actions)
        if seq.ref_logprobs is not None:
            kl = kl_k3(logprobs, seq.ref_logprobs)
            loss = loss + self.config.kl_coef * kl.sum()
            stats.kl = float(kl.detach().sum())
        return loss, stats


class PPO:
    name = "ppo"
    value_head = True

    def __init__(self, config: RLConfig) -> None:
        self.config = config

    def flat(self, rewards: list[float | None]) -> set[int]:
        return set()  # a value head learns from every rollout

    def advantages(self, sequences: list[Sequence], rewards: list[float | None]) -> None:
        """GAE over each rollout's tokens (its sequences in order), then whitened over the step."""
        config = self.config
        for index, reward in enumerate(rewards):
            of_rollout = [s for s in sequences if s.rollout == index]
            if not of_rollout or reward is None:
                continue
            logprobs = torch.cat([s.old_logprobs for s in of_rollout])
            first = of_rollout[0]
            ref = torch.cat([s.ref_logprobs for s in of_rollout]) if first.ref_logprobs is not None else None
            values = torch.cat([s.old_values for s in of_rollout])
            token_rewards = ppo_token_rewards(float(reward), logprobs, ref, config.kl_coef)
            adv, returns = gae(token_rewards, values, config.gamma, config.lam)
            offset = 0
            for seq in of_rollout:
                n = seq.old_logprobs.numel()
                seq.advantages, seq.returns = adv[offset : offset + n], returns[offset : offset + n]
                offset += n
        every = torch.cat([s.advantages for s in sequences]) if sequences else torch.zeros(1)
        mean, std = every.mean(), every.std(unbiased=False)
        for seq in sequences:
            seq.advantages = (seq.advantages - mean) / (std + 1e-6)  # whitened, as PPO for LMs does

    def loss(self, seq: Sequence, logprobs: torch.Tensor, values: Any) -> tuple[torch.Tensor, LossStats]:
        """The sequence's summed token loss: the clipped policy loss (weighted by TIS when set) and the
        clipped value loss; the KL is in the rewards, and measured here."""
        pg, clipped, loss = _policy_loss(self.config, seq, logprobs)
        stats = LossStats(float(pg.detach().sum()), 0.0, 0.0, float(clipped.float().sum()), seq.actions)
        if seq.ref_logprobs is not None:
            stats.kl = float(kl_k3(logprobs, seq.ref_logprobs).detach().sum())
        vl = clipped_value_loss(values, seq.old_values, seq.returns, self.config.value_clip)
        stats.value_loss = float(vl.detach().sum())
        return loss + self.config.vf_coef * vl.sum(), stats


def _policy_loss(config: RLConfig, seq: Sequence, logprobs: torch.Tensor) -> tuple[Any, Any, torch.Tensor]:
    pg, clipped = clipped_policy_loss(logprobs, seq.old_logprobs, seq.advantages, config.clip)
    if seq.tis_weights is not None:
        pg = pg * seq.tis_weights
    return pg, clipped, pg.sum()


Algorithm = GRPO | PPO


def algorithm(config: RLConfig) -> Algorithm:
    """The algorithm `config.algo` names."""
    return PPO(config) if config.algo == "ppo" else GRPO(config)
