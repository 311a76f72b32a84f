"""Plain PyTorch definitions of every op in dr_kernels: what each fused kernel must compute.

They materialize everything (the full logits, every intermediate) and are the yardstick the tests compare
the kernels with, value by value and gradient by gradient. Each takes the parameters of its op in
dr_kernels.ops, deliberately: a test calls both with the same arguments (the signatures repeat, and
linear_cross_entropy's and label_logprobs' share their leading parameters, as their ops' do).
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
    is `ignore_index` count zero. "mean" is the mask-weighted mean: it divides by the sum of the weights of
    the counted tokens (a fractional mask is honoured exactly), and is 0 when that sum is 0.
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
    return per_token.sum() / weight_total(weights)


def weight_total(weights: torch.Tensor) -> torch.Tensor:
    """The denominator of a mask-weighted mean: the weights' sum, or 1 where it is 0 (the sum is 0 too)."""
    total = weights.sum()
    return torch.where(total > 0, total, torch.ones_like(total))


def label_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """log p(label) per token (0 where the label is ignored): what RL's policy ratio is built from."""
    return -linear_cross_entropy(hidden, weight, labels, bias, ignore_index, reduction="none")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Hugging Face's Llama/Qwen RMSNorm: fp32 statistics, cast back before the weight."""
    dtype = x.dtype
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    summed = x + residual
    return rms_norm(summed, weight, eps), summed


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) · up, the activation of Llama/Qwen MLPs."""
    return F.silu(gate) * up


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_cos_sin(
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    scaling: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of shape (batch, tokens, head_dim) for positions, as Hugging Face's rotary modules make
    them: angles in fp32, times the rope type's attention scaling (YaRN's), in the activations' dtype."""
    freqs = position_ids.float()[..., None] * inv_freq.float()
    angles = torch.cat((freqs, freqs), dim=-1)
    return (angles.cos() * scaling).to(dtype), (angles.sin() * scaling).to(dtype)


def rope(
    q: torch.Tensor, k: torch.Tensor, position_ids: torch.Tensor, inv_freq: torch.Tensor, scaling: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding of q (batch, heads, tokens, dim) and k (batch, kv_heads, tokens, dim)."""
    cos, sin = rope_cos_sin(position_ids, inv_freq, scaling, q.dtype)
    cos, sin = cos[:, None], sin[:, None]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
