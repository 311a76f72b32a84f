"""The arithmetic of RL for language-model agents: advantages (GRPO's group normalization, GAE for PPO),
the clipped policy loss, the KL estimate to the reference policy, and PPO's clipped value loss.

Plain functions on tensors, checked against hand-computed cases in the tests. Per-token tensors are 1-D
over the tokens the policy produced (tool results and prompts never appear in them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: each reward minus its group's mean, over the group's standard deviation (population).

    `rewards` holds consecutive groups of `group_size` samples of the same task; a group whose samples all
    scored the same gives zero advantage (nothing to prefer). A NaN reward is a sample that has none (its
    judge abstained): it is left out of its group's mean and deviation and gets advantage 0, and a group
    left with fewer than two rewarded samples has nothing to compare (0 everywhere).
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.float().reshape(-1, group_size)
    known = ~torch.isnan(groups)
    count = known.sum(dim=1, keepdim=True)
    filled = torch.where(known, groups, torch.zeros_like(groups))
    mean = filled.sum(dim=1, keepdim=True) / count.clamp(min=1)
    centred = torch.where(known, groups - mean, torch.zeros_like(groups))
    std = (centred.square().sum(dim=1, keepdim=True) / count.clamp(min=1)).sqrt()
    advantages = centred / (std + eps)
    # A constant group's float32 mean can miss its value by an ulp, leaving a std of ~6e-8 and advantages
    # of ~0.06: decide "all equal" on the rewards themselves, not on the arithmetic.
    first = torch.where(known, groups, torch.full_like(groups, math.inf)).min(dim=1, keepdim=True).values
    constant = (~known | (groups == first)).all(dim=1, keepdim=True) | (count < 2)
    return torch.where(constant | ~known, torch.zeros_like(advantages), advantages).reshape(-1)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalized advantage estimation over one rollout's action tokens.

    The value after the last token is 0 (the episode ends). With gamma = lam = 1, as the Step-DeepResearch
    report uses, the advantage of a token is the sum of the rewards from it on, minus its value.
    """
    r, v = rewards.float().tolist(), values.float().tolist()
    out = [0.0] * len(v)
    running = 0.0
    for t in range(len(v) - 1, -1, -1):
        following = v[t + 1] if t + 1 < len(v) else 0.0
        running = r[t] + gamma * following - v[t] + gamma * lam * running
        out[t] = running
    advantages = torch.tensor(out, dtype=torch.float32, device=values.device)
    return advantages, advantages + values.float()


def ppo_token_rewards(
    final_reward: float, logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None, kl_coef: float
) -> torch.Tensor:
    """PPO's per-token rewards: -kl_coef·(log π - log π_ref) at every token, plus the outcome at the last."""
    rewards = torch.zeros_like(logprobs, dtype=torch.float32)
    if ref_logprobs is not None and kl_coef:
        rewards -= kl_coef * (logprobs.float() - ref_logprobs.float())
    if rewards.numel():
        rewards[-1] += final_reward
    return rewards


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token -min(ρ·A, clip(ρ, 1-ε, 1+ε)·A) with ρ = π/π_old, and whether each token was clipped."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    return -torch.minimum(unclipped, clipped), (clipped < unclipped)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate exp(r) - r - 1 with r = log π_ref - log π: unbiased, never negative."""
    r = ref_logprobs - logprobs
    return torch.exp(r) - r - 1


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float
) -> torch.Tensor:
    """Per-token ½·max((V - R)², (clip(V, V_old ± ε) - R)²)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def flat_groups(rewards: Sequence[float | None], group_size: int) -> set[int]:
    """The indexes of the groups (consecutive `group_size` samples of one task) whose rewarded samples
    (None: no reward) all got the same reward, or that have fewer than two: GRPO gives every token of them
    zero advantage."""
    groups = [rewards[i : i + group_size] for i in range(0, len(rewards), group_size)]
    flat = set()
    for i, group in enumerate(groups):
        known = [x for x in group if x is not None]
        if len(known) < 2 or all(x == known[0] for x in known):
            flat.add(i)
    return flat
