"""Plain PyTorch definitions of every op in dr_kernels: what each fused kernel must compute.

They materialize everything (the full logits, every intermediate) and are the yardstick the tests compare
the kernels with, value by value and gradient by gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE,
    reduction: str = "mean",
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
    loss_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T + bias` against `labels` (aligned: row i predicts labels[i]).

    Per token: (1 - s)·(lse - z_y) + s·(lse - mean(z)) + z_loss·lse², times the loss mask; tokens whose label
    is `ignore_index` count zero. "mean" divides by the (mask-weighted) number of counted tokens.
    """
    logits = F.linear(hidden, weight, bias).float()
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0)
    lse = torch.logsumexp(logits, dim=-1)
    nll = lse - logits.gather(-1, safe[:, None])[:, 0]
    if label_smoothing:
        nll = (1 - label_smoothing) * nll + label_smoothing * (lse - logits.mean(-1))
    if z_loss:
        nll = nll + z_loss * lse.square()
    weights = valid.float() if loss_mask is None else valid.float() * loss_mask.float()
    per_token = nll * weights
    if reduction == "none":
        return per_token
    if reduction == "sum":
        return per_token.sum()
    return per_token.sum() / weights.sum().clamp(min=1)


def label_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """log p(label) per token (0 where the label is ignored): what RL's policy ratio is built from."""
    return -linear_cross_entropy(hidden, weight, labels, bias, ignore_index, reduction="none")
