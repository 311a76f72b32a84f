"""Fused linear cross-entropy: hidden states × LM head → loss, never holding all (tokens × vocab) logits.

The tokens are processed in chunks; each chunk's logits live only long enough to give its loss and the
gradient of the logits, which is folded straight into the gradients of the hidden states and the weight.
For a scalar loss (sum or mean) the gradients are made in the forward pass, as Liger does, so the backward
is a multiply; for per-token outputs (RL's log-probabilities) the backward recomputes each chunk's logits.

Under autocast (bf16 on the CPU) the PyTorch path casts the weight once and makes every matmul in the
autocast dtype, as autocast would, rather than letting autocast cast the whole weight again for each
chunk while the gradient matmuls ran in fp32; the loss and its gradient are still worked out in fp32.
"""

import math
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from dr_kernels.ops.backend import choose, tl, triton
from dr_kernels.reference import IGNORE, weight_total

# On the CPU a chunk holds about this many logits (128 MB in fp32)
CPU_CHUNK_LOGITS = 1 << 25


def _chunk_size(tokens: int, hidden: int, vocab: int, cpu: bool = False) -> int:
    # Chunks of about as many logits as the hidden states hold keep the extra memory at the size of the
    # input while the matmuls stay large enough to run at full speed.
    chunks = max(1, math.ceil(vocab / max(hidden, 1)))
    size = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(tokens / chunks)))))
    if cpu:
        # every chunk reads and writes the whole (vocab × hidden) weight gradient, and small matmuls run
        # far below a CPU's peak: far fewer, larger chunks there (a 135M model's 49K vocabulary: 512 tokens)
        size = max(size, 1 << max(0, int(math.log2(max(1, CPU_CHUNK_LOGITS // max(vocab, 1))))))
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


@triton.jit
def _ce_rows(
    LOGITS, stride, LABELS, SCALE, LOSS, n_vocab, ignore_index, smoothing, z_loss,
    WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One row of logits: its loss, and (WRITE_GRAD) d(loss)/d(logits)·scale written over the logits."""
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride
    label = tl.load(LABELS + row)
    scale = tl.load(SCALE + row)
    valid = label != ignore_index
    # online logsumexp: one read of the row
    running_max = tl.full([], float("-inf"), tl.float32)
    total = tl.zeros([], tl.float32)
    summed = tl.zeros([], tl.float32)
    for start in range(0, n_vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n_vocab
        z = tl.load(base + offs, mask=mask, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(z, axis=0))
        total = total * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
        running_max = new_max
        summed += tl.sum(tl.where(mask, z, 0.0), axis=0)
    lse = running_max + tl.log(total)
    safe = tl.where(valid, label, 0)
    target = tl.load(base + safe).to(tl.float32)
    loss = lse - target
    if smoothing > 0:
        loss = (1.0 - smoothing) * loss + smoothing * (lse - summed / n_vocab)
    if z_loss > 0:
        loss += z_loss * lse * lse
    weight = tl.where(valid, scale, 0.0)
    tl.store(LOSS + row, loss * weight)
    if WRITE_GRAD:
        # p·(1 + 2c·lse) - s/V - (1-s)·onehot(y), times the token's weight
        for start in range(0, n_vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n_vocab
            z = tl.load(base + offs, mask=mask, other=0.0).to(tl.float32)
            grad = tl.exp(z - lse) * (1.0 + 2.0 * z_loss * lse) - smoothing / n_vocab
            grad = tl.where(offs == safe, grad - (1.0 - smoothing), grad)
            tl.store(base + offs, (grad * weight).to(LOGITS.dtype.element_ty), mask=mask)


def _chunk(h, weight, bias, labels, scale, ignore_index, label_smoothing, z_loss, use_triton, want_grad):
    """(per-token loss · scale in fp32, d(loss·scale)/d(logits) in the activations' dtype or None)."""
    if use_triton:
        logits = F.linear(h, weight, bias).contiguous()
        loss = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        _ce_rows[(h.shape[0],)](
            logits, logits.stride(0), labels, scale.float().contiguous(), loss, logits.shape[1], ignore_index,
            float(label_smoothing), float(z_loss), WRITE_GRAD=want_grad,
            BLOCK=min(4096, triton.next_power_of_2(logits.shape[1])),
        )  # fmt: skip
        return loss, (logits if want_grad else None)
    logits = F.linear(h, weight, bias).float()
    valid = labels != ignore_index
    loss, grad = _chunk_terms(logits, labels, valid, label_smoothing, z_loss)
    scale = scale * valid
    return loss * scale, ((grad * scale[:, None]).to(h.dtype) if want_grad else None)


def _grad_buffers(hidden, weight, bias, need):
    """Zeroed gradients for the inputs that need one (the bias's in fp32: it sums over every token)."""
    return (
        torch.zeros_like(hidden) if need[0] else None,
        torch.zeros_like(weight) if need[1] else None,
        torch.zeros_like(bias, dtype=torch.float32) if bias is not None and need[2] else None,
    )


def _accumulate(grad, h, weight, start, end, grad_hidden, grad_weight, grad_bias):
    """Fold one chunk's d(loss)/d(logits) into the gradients. The matmuls run in the dtype of `grad`, `h` and
    `weight` (the autocast dtype under autocast); the buffers keep the inputs' own dtypes."""
    if grad_hidden is not None:
        if grad_hidden.dtype == grad.dtype:
            torch.mm(grad, weight, out=grad_hidden[start:end])
        else:
            grad_hidden[start:end] = torch.mm(grad, weight)
    if grad_weight is not None:
        if grad_weight.dtype == grad.dtype:
            grad_weight.addmm_(grad.t(), h)
        else:  # the product in the autocast dtype, summed over chunks in the weight's
            grad_weight += torch.mm(grad.t(), h)
    if grad_bias is not None:
        grad_bias += grad.float().sum(0)


def _compute_inputs(hidden, weight, bias, compute):
    """(hidden, weight, bias) in the dtype the matmuls run in: cast once for every chunk (autocast), or as
    given."""
    if compute is None:
        return hidden, weight, bias
    return hidden.to(compute), weight.to(compute), None if bias is None else bias.to(compute)


def _no_autocast(device, compute):
    return torch.autocast(device.type, enabled=False) if compute is not None else nullcontext()


# forward's inputs after (hidden, weight, bias), none of which takes a gradient: labels, weights, scalar,
# ignore_index, label_smoothing, z_loss, chunk, use_triton, compute
_NO_GRAD = (None,) * 9


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        weights: torch.Tensor,
        scalar: bool,
        ignore_index: int,
        label_smoothing: float,
        z_loss: float,
        chunk: int,
        use_triton: bool,
        compute: torch.dtype | None,
    ) -> torch.Tensor:
        tokens = hidden.shape[0]
        per_token = torch.zeros(tokens, dtype=torch.float32, device=hidden.device)
        grads = _grad_buffers(hidden, weight, bias, ctx.needs_input_grad if scalar else (False,) * 3)
        with _no_autocast(hidden.device, compute):
            h_all, w, b = _compute_inputs(hidden, weight, bias, compute)
            for start in range(0, tokens, chunk):
                end = min(start + chunk, tokens)
                h = h_all[start:end]
                loss, grad = _chunk(
                    h, w, b, labels[start:end], weights[start:end], ignore_index, label_smoothing, z_loss,
                    use_triton, scalar and any(g is not None for g in grads),
                )  # fmt: skip
                per_token[start:end] = loss
                if grad is not None:
                    _accumulate(grad, h, w, start, end, *grads)
        ctx.scalar = scalar
        if scalar:
            ctx.save_for_backward(*grads)
            ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
            return per_token.sum()
        ctx.save_for_backward(hidden, weight, bias, labels, weights)
        ctx.args = (ignore_index, label_smoothing, z_loss, chunk, use_triton, compute)
        return per_token

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.scalar:
            grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
            dh, dw, db = ctx.dtypes
            out = [
                None if grad_hidden is None else (grad_hidden * grad_out).to(dh),
                None if grad_weight is None else (grad_weight * grad_out).to(dw),
                None if grad_bias is None else (grad_bias * grad_out).to(db),
            ]
            return (*out, *_NO_GRAD)
        hidden, weight, bias, labels, weights = ctx.saved_tensors
        ignore_index, label_smoothing, z_loss, chunk, use_triton, compute = ctx.args
        grads = _grad_buffers(hidden, weight, bias, ctx.needs_input_grad)
        scale = weights * grad_out.float()
        with _no_autocast(hidden.device, compute):
            h_all, w, b = _compute_inputs(hidden, weight, bias, compute)
            for start in range(0, hidden.shape[0], chunk):
                end = min(start + chunk, hidden.shape[0])
                h = h_all[start:end]
                _, grad = _chunk(
                    h, w, b, labels[start:end], scale[start:end], ignore_index, label_smoothing, z_loss,
                    use_triton, True,
                )  # fmt: skip
                _accumulate(grad, h, w, start, end, *grads)
        grad_hidden, grad_weight, grad_bias = grads
        return (
            grad_hidden,
            grad_weight,
            None if grad_bias is None else grad_bias.to(bias.dtype),
            *_NO_GRAD,
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
    backend: str | None = None,
) -> torch.Tensor:
    """The loss of `dr_kernels.reference.linear_cross_entropy`, computed chunk by chunk. Its parameters are
    the reference's, deliberately repeated (the reference is the op's specification), plus how to chunk.

    hidden: (tokens, H) or (batch, tokens, H) with labels to match; weight: (V, H).
    reduction: "mean" (the mask-weighted mean over counted tokens, as the reference), "sum", or "none".
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
    use_triton = choose(hidden, backend) == "triton"
    cpu = hidden.device.type == "cpu" and not use_triton
    chunk = chunk_size or _chunk_size(hidden.shape[0], hidden.shape[1], weight.shape[0], cpu=cpu)
    scalar = reduction != "none"
    # the PyTorch path under autocast: the matmuls in the autocast dtype, the weight cast once
    device = hidden.device.type
    compute = (
        torch.get_autocast_dtype(device) if not use_triton and torch.is_autocast_enabled(device) else None
    )
    out = _LinearCrossEntropy.apply(
        hidden,
        weight,
        bias,
        labels,
        weights,
        scalar,
        ignore_index,
        label_smoothing,
        z_loss,
        chunk,
        use_triton,
        compute,
    )
    if reduction == "mean":
        return out / weight_total(weights * valid)
    if reduction == "none":
        return out.reshape(shape)
    return out


def label_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE,
    backend: str | None = None,
) -> torch.Tensor:
    """log p(label) per token, differentiable (0 where the label is ignored), without the full logits."""
    return -linear_cross_entropy(
        hidden, weight, labels, bias, ignore_index, reduction="none", backend=backend
    )
