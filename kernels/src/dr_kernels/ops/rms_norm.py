"""RMSNorm, alone or fused with the residual add before it, in one pass over each row.

Rounding follows Hugging Face's Llama/Qwen RMSNorm: statistics in fp32, the normalized row cast to the
input dtype before the weight multiplies it. The fused form returns (normed, residual sum), the two
tensors a decoder layer needs, reading its inputs once.
"""

from typing import Any

import torch

from dr_kernels.ops import compiled
from dr_kernels.ops.backend import block_size, choose, tl, triton


@triton.jit
def _forward(X, R, W, Y, S, RSTD, stride, n_cols, eps, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + row * stride + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(Y.dtype.element_ty)
        tl.store(S + row * stride + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    tl.store(RSTD + row, rstd)
    normed = (xf * rstd).to(Y.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride + cols, (normed * w).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _backward(
    DY, DS, X, W, RSTD, DX, DW_PARTIAL, stride, n_rows, n_cols, rows_per_program,
    HAS_DS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    first = pid * rows_per_program
    for i in range(0, rows_per_program):
        row = (first + i).to(tl.int64)
        if row < n_rows:
            x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            normed = x * rstd
            dw += dy * normed.to(DX.dtype.element_ty).to(tl.float32)
            dn = dy * w
            dx = rstd * (dn - normed * (tl.sum(dn * normed, axis=0) / n_cols))
            if HAS_DS:
                dx += tl.load(DS + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + row * stride + cols, dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PARTIAL + pid * n_cols + cols, dw, mask=mask)


def _programs(rows: int, device: torch.device) -> int:
    if device.type == "cuda":
        return min(rows, torch.cuda.get_device_properties(device).multi_processor_count * 4)
    return min(rows, 8)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None, eps: float
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        rows, cols = x2.shape
        r2 = residual.reshape(-1, cols).contiguous() if residual is not None else None
        y = torch.empty_like(x2)
        s = torch.empty_like(x2) if residual is not None else x2
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        _forward[(rows,)](
            x2, r2 if r2 is not None else x2, weight, y, s, rstd, x2.stride(0), cols, eps,
            HAS_RESIDUAL=residual is not None, BLOCK=block_size(cols),
        )  # fmt: skip
        ctx.save_for_backward(s, weight, rstd)
        ctx.residual = residual is not None
        ctx.shape = shape
        if residual is not None:
            return y.reshape(shape), s.reshape(shape)
        return y.reshape(shape)

    @staticmethod
    def backward(
        ctx: Any, dy: torch.Tensor, ds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, ...]:
        s, weight, rstd = ctx.saved_tensors
        rows, cols = s.shape
        dy2 = dy.reshape(rows, cols).contiguous()
        ds2 = ds.reshape(rows, cols).contiguous() if ds is not None else None
        dx = torch.empty_like(s)
        programs = _programs(rows, s.device)
        partial = torch.empty(programs, cols, dtype=torch.float32, device=s.device)
        _backward[(programs,)](
            dy2, ds2 if ds2 is not None else dy2, s, weight, rstd, dx, partial, s.stride(0), rows, cols,
            triton.cdiv(rows, programs), HAS_DS=ds2 is not None, BLOCK=block_size(cols),
        )  # fmt: skip
        dw = partial.sum(0).to(weight.dtype)
        dx = dx.reshape(ctx.shape)
        if ctx.residual:
            return dx, dw, dx, None
        return dx, dw, None, None


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, backend: str | None = None
) -> torch.Tensor:
    """weight · x / rms(x) over the last dimension."""
    if choose(x, backend) == "torch":
        return compiled.run("rms_norm", x, weight, eps)
    return _RMSNorm.apply(x, weight, None, eps)


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): a decoder layer's residual add and the norm after it."""
    if choose(x, backend) == "torch":
        return compiled.run("add_rms_norm", x, residual, weight, eps)
    return _RMSNorm.apply(x, weight, residual, eps)
