"""Rotary position embedding of q and k in one launch, angles computed in the kernel from `position_ids`.

Positions come per token, so packed rows (positions restarting at every document) need nothing special.
The rope-scaling variants of Hugging Face configs (linear, dynamic NTK, YaRN, ...) differ only in the
inverse frequencies and an attention scaling factor, which the caller passes (see `patch`, which takes
them from the model's own rotary module). Backward is the rotation by the opposite angle.
"""

from typing import Any

import torch

from dr_kernels import reference
from dr_kernels.ops.backend import block_size, choose, tl, triton


@triton.jit
def _rotate(
    X, Y, POS, INV_FREQ, scaling, tokens, heads, half,
    sxb, sxh, sxt, syb, syh, syt, sign,
    HEADS: tl.constexpr, HALF: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    b = pid // tokens
    t = pid % tokens
    h = tl.arange(0, HEADS)[:, None]
    j = tl.arange(0, HALF)[None, :]
    mask = (h < heads) & (j < half)
    pos = tl.load(POS + pid).to(tl.float32)
    angle = pos * tl.load(INV_FREQ + j, mask=j < half, other=0.0).to(tl.float32)
    cos = tl.cos(angle) * scaling
    sin = tl.sin(angle) * scaling * sign
    x_row = X + b.to(tl.int64) * sxb + t.to(tl.int64) * sxt + h * sxh
    y_row = Y + b.to(tl.int64) * syb + t.to(tl.int64) * syt + h * syh
    x1 = tl.load(x_row + j, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + half + j, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_row + j, (x1 * cos - x2 * sin).to(Y.dtype.element_ty), mask=mask)
    tl.store(y_row + half + j, (x2 * cos + x1 * sin).to(Y.dtype.element_ty), mask=mask)


def _apply(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float, sign: float):
    batch, heads, tokens, dim = x.shape
    y = torch.empty(batch, tokens, heads, dim, dtype=x.dtype, device=x.device).transpose(1, 2)
    if x.stride(-1) != 1:
        x = x.contiguous()
    _rotate[(batch * tokens,)](
        x, y, positions, inv_freq, scaling, tokens, heads, dim // 2,
        x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2), sign,
        HEADS=block_size(heads), HALF=block_size(dim // 2),
    )  # fmt: skip
    return y


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        positions: torch.Tensor,
        inv_freq: torch.Tensor,
        scaling: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        positions = positions.expand(q.shape[0], q.shape[2]).contiguous()
        inv_freq = inv_freq.float().contiguous()
        ctx.save_for_backward(positions, inv_freq)
        ctx.scaling = scaling
        return _apply(q, positions, inv_freq, scaling, 1.0), _apply(k, positions, inv_freq, scaling, 1.0)

    @staticmethod
    def backward(ctx: Any, dq: torch.Tensor, dk: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        positions, inv_freq = ctx.saved_tensors
        # the transpose of a rotation is the rotation by the opposite angle
        return (
            _apply(dq, positions, inv_freq, ctx.scaling, -1.0),
            _apply(dk, positions, inv_freq, ctx.scaling, -1.0),
            None,
            None,
            None,
        )


def rope(
    q: torch.Tensor,
    k: torch.Tensor,
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    scaling: float = 1.0,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, k) rotated: q (batch, heads, tokens, dim), k (batch, kv_heads, tokens, dim), position_ids
    (batch or 1, tokens), inv_freq (dim / 2,), scaling: the rope type's attention factor (1 but for YaRN)."""
    if q.shape[-1] % 2:
        raise ValueError(f"rope needs an even head dimension, got {q.shape[-1]}")
    if choose(q, backend) == "torch":
        return reference.rope(q, k, position_ids.expand(q.shape[0], -1), inv_freq, scaling)
    return _Rope.apply(q, k, position_ids, inv_freq, float(scaling))
