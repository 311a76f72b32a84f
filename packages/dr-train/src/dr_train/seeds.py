"""Every seed dr-train derives from a run's `--seed`, in one place: what each stream of randomness is keyed
by (the step, the rollout, the rank, the epoch), so that a resumed or re-ranked run draws the same numbers.
The formulas are those the recorded runs used; changing one changes every run's draws."""

from __future__ import annotations


def step_tasks(seed: int, step: int) -> int:
    """RL: which tasks a step draws."""
    return seed * 1_000_003 + step


def rollout(seed: int, step: int, index: int) -> int:
    """RL: the sampling of the step's index-th rollout, when rollouts run one at a time (the same on any
    number of ranks)."""
    return (seed * 7919 + step) * 100_003 + index


def rank_rollouts(seed: int, step: int, rank: int) -> int:
    """RL: a rank's sampling for the step's rollouts when several run at once."""
    return seed * 7919 + step + 1_000_003 * rank


def minibatches(seed: int, step: int) -> int:
    """RL: the order of a step's sequences in its minibatches."""
    return seed * 31 + step


def epoch_order(seed: int, epoch: int) -> int:
    """Mid-training and SFT: the order of the rows in an epoch."""
    return seed * 100_003 + epoch


def copy_drill(seed: int, step: int, rank: int) -> int:
    """Copy drills: a rank's drills of a step."""
    return (seed * 1_000_003 + step) * 1009 + rank


def copy_held_out(seed: int, index: int) -> int:
    """Copy drills: the index-th held-out drill."""
    return seed * 7 + index
