"""Fused linear cross-entropy: hidden states × LM head → loss, never holding all (tokens × vocab) logits.

The tokens are processed in chunks; each chunk's logits live only long enough to give its loss and the
gradient of the logits, which is folded straight into the gradients of the hidden states and the weight.
For a scalar loss (sum or mean) the gradients are made in the forward pass, as Liger does, so the backward
is a multiply; for per-token outputs (RL's log-probabilities) the backward recomputes each chunk's logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dr_kernels.reference import IGNORE


def _chunk_size(tokens: int, hidden: int, vocab: int) -> int:
    # Chunks of about as many logits as the hidden states hold keep the extra memory at the size of the
    # input while the matmuls stay large enough to run at full speed.
    chunks = max(1, math.ceil(vocab / max(hidden, 1)))
    size = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(tokens / chunks)))))
    return max(16, min(size, max(tokens, 1)))


def _chunk_terms(logits, labels, valid, label_smoothing, z_loss):
    """Per-token loss and d(loss)/d(logits) (unweighted) for one chunk of fp32 logits."""
    safe = torch.where(valid, labels, 0)
    lse = torch.logsumexp(logits, dim=-1)
    target = logits.gather(-1, safe[:, None])[:, 0]
    loss = lse - target
    # d/dz of (1-s)(lse - z_y) + s(lse - mean z) + c·lse² = p·(1 + 2c·lse) - (1-s)·onehot(y) - s/V
    grad = torch.softmax(logits, dim=-1)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss + label_smoothing * (lse - logits.mean(-1))
    if z_loss:
        loss = loss + z_loss * lse.square()
        grad = grad * (1 + 2 * z_loss * lse)[:, None]
    if label_smoothing:
        grad = grad - label_smoothing / logits.shape[-1]
    hit = torch.full_like(target, -(1 - label_smoothing))[:, None]
    grad.scatter_add_(-1, safe[:, None], hit)
    return loss, grad


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden, weight, bias, labels, weights, scalar, ignore_index, label_smoothing, z_loss, chunk
    ):
        tokens = hidden.shape[0]
        valid = labels != ignore_index
        per_token = torch.zeros(tokens, dtype=torch.float32, device=hidden.device)
        need = ctx.needs_input_grad
        grad_hidden = torch.zeros_like(hidden) if scalar and need[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if scalar and need[1] else None
        grad_bias = (
            torch.zeros_like(bias, dtype=torch.float32) if scalar and bias is not None and need[2] else None
        )
        for start in range(0, tokens, chunk):
            end = min(start + chunk, tokens)
            h = hidden[start:end]
            logits = F.linear(h, weight, bias).float()
            loss, grad = _chunk_terms(logits, labels[start:end], valid[start:end], label_smoothing, z_loss)
            w = weights[start:end] * valid[start:end]
            per_token[start:end] = loss * w
            if scalar:
                grad = (grad * w[:, None]).to(hidden.dtype)
                if grad_hidden is not None:
                    grad_hidden[start:end] = grad @ weight
                if grad_weight is not None:
                    grad_weight += grad.t().float() @ h.float()
                if grad_bias is not None:
                    grad_bias += grad.float().sum(0)
        ctx.scalar = scalar
        ctx.has_bias = bias is not None
        if scalar:
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
            ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
            return per_token.sum()
        ctx.save_for_backward(hidden, weight, bias, labels, weights)
        ctx.args = (ignore_index, label_smoothing, z_loss, chunk)
        return per_token

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.scalar:
            grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
            dh, dw, db = ctx.dtypes
            out = [
                None if grad_hidden is None else (grad_hidden * grad_out).to(dh),
                None if grad_weight is None else (grad_weight * grad_out).to(dw),
                None if grad_bias is None else (grad_bias * grad_out).to(db),
            ]
            return (*out, *[None] * 7)
        hidden, weight, bias, labels, weights = ctx.saved_tensors
        ignore_index, label_smoothing, z_loss, chunk = ctx.args
        need = ctx.needs_input_grad
        grad_hidden = torch.zeros_like(hidden) if need[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and need[2] else None
        valid = labels != ignore_index
        for start in range(0, hidden.shape[0], chunk):
            end = min(start + chunk, hidden.shape[0])
            h = hidden[start:end]
            logits = F.linear(h, weight, bias).float()
            _, grad = _chunk_terms(logits, labels[start:end], valid[start:end], label_smoothing, z_loss)
            scale = grad_out[start:end].float() * weights[start:end] * valid[start:end]
            grad = (grad * scale[:, None]).to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start:end] = grad @ weight
            if grad_weight is not None:
                grad_weight += grad.t().float() @ h.float()
            if grad_bias is not None:
                grad_bias += grad.float().sum(0)
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            *[None] * 7,
        )


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
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The loss of `dr_kernels.reference.linear_cross_entropy`, computed chunk by chunk.

    hidden: (tokens, H) or (batch, tokens, H) with labels to match; weight: (V, H).
    reduction: "mean" (over counted tokens, mask-weighted), "sum", or "none" (per token).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction {reduction!r}: choose mean, sum or none")
    shape = labels.shape
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    valid = labels != ignore_index
    weights = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    if loss_mask is not None:
        weights = loss_mask.reshape(-1).float()
    chunk = chunk_size or _chunk_size(hidden.shape[0], hidden.shape[1], weight.shape[0])
    scalar = reduction != "none"
    out = _LinearCrossEntropy.apply(
        hidden, weight, bias, labels, weights, scalar, ignore_index, label_smoothing, z_loss, chunk
    )
    if reduction == "mean":
        return out / (weights * valid).sum().clamp(min=1)
    if reduction == "none":
        return out.reshape(shape)
    return out


def label_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """log p(label) per token, differentiable (0 where the label is ignored), without the full logits."""
    return -linear_cross_entropy(hidden, weight, labels, bias, ignore_index, reduction="none")
