"""Packed-sequence attention: documents packed into one row never attend to each other.

One function, `packed_attention`, picks the fastest backend present: flash-attn's varlen kernel (CUDA,
flash-attn installed), PyTorch flex attention with a document block mask (CUDA), or SDPA run on each
document alone (anywhere; the last resort, and the reference the others are tested against).
`DR_ATTENTION=flash|flex|sdpa` or the `backend=` argument overrides the choice.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
from typing import Any, Literal

import torch
import torch.nn.functional as F

Backend = Literal["flash", "flex", "sdpa"]
BACKENDS: tuple[Backend, ...] = ("flash", "flex", "sdpa")

CPU_SHAPE_MULTIPLE = 64
"""On the CPU, sequence lengths are rounded up to a multiple of this before they reach a matmul or attention.

PyTorch's CPU kernels (oneDNN's bf16 matmuls, the bf16 flash attention's brgemm micro-kernels) compile and
cache a kernel for every new shape. Packed rows and their documents have a new length nearly every step, so
each step paid the compiles (a bf16 attention forward + backward on a new length takes 1.3x as long, a pair
of bf16 linears 2x) and grew the process by ~30 MB that the caches never give back (attention's has no
bound). Rounded, 4,096-token rows take at most 64 lengths, which hit the caches after a few steps
(`python scripts/bench_cpu_shapes.py`)."""

# PyTorch's CPU flash attention, the op F.scaled_dot_product_attention runs on the CPU, and its backward
CPU_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
CPU_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


def cpu_length(n: int) -> int:
    """`n` rounded up to a multiple of `CPU_SHAPE_MULTIPLE`."""
    return -(-n // CPU_SHAPE_MULTIPLE) * CPU_SHAPE_MULTIPLE


def boundaries(position_ids: torch.Tensor) -> torch.Tensor:
    """cu_seqlens (int32, [0, ..., T]) of a packed row whose positions restart at 0 for every document."""
    positions = position_ids.reshape(-1)
    starts = torch.nonzero(positions == 0).flatten()
    if starts.numel() == 0 or starts[0] != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    end = torch.tensor([positions.numel()], device=positions.device, dtype=starts.dtype)
    return torch.cat([starts, end]).to(torch.int32)


def cu_seqlens_of(doc_lengths: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    lengths = torch.tensor([0, *doc_lengths], dtype=torch.int32, device=device)
    return lengths.cumsum(0, dtype=torch.int32)


@functools.cache
def _flash_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def choose_backend(device: torch.device, backend: Backend | None = None) -> Backend:
    """The backend `packed_attention` uses on `device`: the argument, DR_ATTENTION, or the best present."""
    chosen = backend or os.environ.get("DR_ATTENTION") or None
    if chosen is not None:
        if chosen not in BACKENDS:
            raise ValueError(f"attention backend {chosen!r}: choose one of {', '.join(BACKENDS)}")
        if chosen == "flash" and not (device.type == "cuda" and _flash_available()):
            raise ValueError("attention backend 'flash' needs CUDA and flash-attn (pip install flash-attn)")
        return chosen
    if device.type == "cuda":
        return "flash" if _flash_available() else "flex"
    return "sdpa"


def _cpu_windows(cu: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(start, end, stop) of each document: its tokens [start, end) in a window [start, stop) rounded up to
    a multiple of CPU_SHAPE_MULTIPLE. What follows the document in its window (the next document, or zeros
    past the row's end) comes after every one of its tokens, so the causal mask hides it from them."""
    return [(start, end, start + cpu_length(end - start)) for start, end in itertools.pairwise(cu)]


def _window(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of x (1, heads, T, dim), zeros past T."""
    total = x.shape[2]
    piece = x[:, :, start : min(stop, total)]
    return F.pad(piece, (0, 0, 0, stop - total)) if stop > total else piece


class _CpuDocumentAttention(torch.autograd.Function):
    """Causal attention of each document in its window, with PyTorch's CPU flash attention, as one
    autograd node. Each window's backward writes its document's rows of the row's gradients directly:
    autograd's own backward of the slices would zero-pad a whole-row gradient per document and add them up
    (3-15% of the attention's time with two or three documents a row, about 3% of such a step, on two
    cores: `python scripts/bench_cpu_attention.py`, docs/benchmarks.md)."""

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: tuple[int, ...], scale: float | None
    ) -> torch.Tensor:
        group = q.shape[1] // k.shape[1]
        if group > 1:
            # PyTorch's CPU flash attention runs grouped-query attention 6-9% slower (forward + backward)
            # than plain attention on the key/value heads repeated for each query head (SmolLM2's 9 / 3
            # heads, bf16, 2,077 and 2,551 tokens)
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = torch.empty_like(q)
        saved = []
        for start, end, stop in _cpu_windows(cu):
            o, lse = CPU_FLASH(
                _window(q, start, stop),
                _window(k, start, stop),
                _window(v, start, stop),
                0.0,
                True,
                scale=scale,
            )
            out[:, :, start:end] = o[:, :, : end - start]
            saved += [o, lse]  # the window's own output and log-sum-exp, as its backward needs them
        ctx.save_for_backward(q, k, v, *saved)
        ctx.cu, ctx.scale, ctx.group = cu, scale, group
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, *saved = ctx.saved_tensors
        # every row belongs to one document, so each is written below
        dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype) for _ in range(3))
        for i, (start, end, stop) in enumerate(_cpu_windows(ctx.cu)):
            # the window's rows past its document have no gradient: their outputs were dropped
            g = grad[:, :, start:end]
            g = F.pad(g, (0, 0, 0, stop - end)) if stop > end else g
            window = (_window(x, start, stop) for x in (q, k, v))
            grads = CPU_FLASH_BACKWARD(g, *window, saved[2 * i], saved[2 * i + 1], 0.0, True, scale=ctx.scale)
            for full, part in zip((dq, dk, dv), grads, strict=True):
                full[:, :, start:end] = part[:, :, : end - start]
        if ctx.group > 1:
            batch, heads, total, dim = dk.shape
            dk = dk.view(batch, heads // ctx.group, ctx.group, total, dim).sum(2)
            dv = dv.view(batch, heads // ctx.group, ctx.group, total, dim).sum(2)
        return dq, dk, dv, None, None


def _sdpa_per_document(q, k, v, cu: list[int], scale: float | None) -> torch.Tensor:
    if q.device.type == "cpu":
        if cu[0] != 0 or cu[-1] != q.shape[2]:
            raise ValueError(f"cu_seqlens {cu[0]}..{cu[-1]} must cover the row's {q.shape[2]} tokens")
        if torch.is_autocast_enabled("cpu"):
            # F.scaled_dot_product_attention is on autocast's lower-precision list; its ops called directly
            # are not, so the inputs are cast here as autocast would
            low = torch.get_autocast_dtype("cpu")
            q, k, v = (x.to(low) for x in (q, k, v))
        return _CpuDocumentAttention.apply(q, k, v, tuple(cu), scale)
    out = torch.empty_like(q)
    for start, end in itertools.pairwise(cu):
        piece = slice(start, end)
        out[:, :, piece] = F.scaled_dot_product_attention(
            q[:, :, piece], k[:, :, piece], v[:, :, piece], is_causal=True, scale=scale,
            enable_gqa=q.shape[1] != k.shape[1],
        )  # fmt: skip
    return out


def _flash(q, k, v, cu: torch.Tensor, scale: float | None) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    # flash-attn wants (tokens, heads, dim)
    qt, kt, vt = (x[0].transpose(0, 1) for x in (q, k, v))
    longest = int((cu[1:] - cu[:-1]).max())
    out = flash_attn_varlen_func(qt, kt, vt, cu, cu, longest, longest, softmax_scale=scale, causal=True)
    return out.transpose(0, 1)[None]


@functools.cache
def _compiled_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q, k, v, cu: torch.Tensor, scale: float | None) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    total = q.shape[2]
    doc = torch.zeros(total, dtype=torch.int32, device=q.device)
    doc[cu[1:-1].long()] = 1
    doc = doc.cumsum(0)

    def document_causal(b, h, qi, ki):
        return (doc[qi] == doc[ki]) & (qi >= ki)

    mask = create_block_mask(document_causal, None, None, total, total, device=q.device)
    kernel = _compiled_flex() if q.device.type == "cuda" else flex_attention
    return kernel(q, k, v, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def packed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """Causal attention within each document of a packed row.

    q: (1, heads, T, dim); k, v: (1, kv_heads, T, dim) (grouped-query attention when fewer kv heads);
    cu_seqlens: int32 [0, end_1, ..., T]. Returns (1, heads, T, dim).
    """
    if q.shape[0] != 1:
        raise ValueError(f"packed attention takes one packed row (batch 1), got batch {q.shape[0]}")
    chosen = choose_backend(q.device, backend)
    if chosen == "flash":
        return _flash(q, k, v, cu_seqlens.to(q.device, torch.int32), scale)
    if chosen == "flex":
        return _flex(q, k, v, cu_seqlens.to(q.device), scale)
    return _sdpa_per_document(q, k, v, cu_seqlens.tolist(), scale)


def hf_packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function Hugging Face models call once patched (see `dr_kernels.patch`).

    Document boundaries come from `cu_seq_lens_q` when the caller passes it (no device sync), else from
    `position_ids`. Anything that is not one packed training row (a padded batch, decoding with a KV cache)
    goes to plain SDPA with the mask it was given.
    """
    cu = kwargs.get("cu_seq_lens_q")
    position_ids = kwargs.get("position_ids")
    packed = query.shape[0] == 1 and query.shape[2] == key.shape[2] and attention_mask is None
    if packed and cu is None and position_ids is not None:
        cu = boundaries(position_ids)
    if packed and cu is not None:
        out = packed_attention(query, key, value, cu, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
