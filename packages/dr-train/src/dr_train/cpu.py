"""What a training step on the CPU does differently from one on a GPU, and why.

- Freed memory stays with the process (`keep_freed_memory`). A step allocates and frees the same few
  gigabytes of activations every time. glibc hands blocks above 32 MB, and the top of the heap, back to the
  kernel, so each step pays to fault the pages in again and zero them: half a million page faults and
  about 7% of a SmolLM2-135M step on a 4,096-token row (docs/benchmarks.md).
- Gradient checkpointing keeps each layer's attention output (`checkpoint_kwargs`). Recomputing a layer
  in the backward pass then skips attention, the costliest part of the recompute on a CPU, for
  layers × tokens × hidden of bf16 (150 MB for SmolLM2-135M at 4,096 tokens). The policy is PyTorch's
  selective activation checkpointing.

A GPU run keeps plain checkpointing and the CUDA caching allocator. DeepSpeed ZeRO-3 keeps plain
checkpointing on the CPU too (`checkpoint_kwargs`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Any

# mallopt's parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# blocks below this come from the heap, where a freed block is reused; the fused loss's logits chunks are
# about 100 MB
MMAP_THRESHOLD = 256 << 20
TOP_PAD = 1 << 30  # grow the heap a gigabyte at a time: address space only until a page is touched
NEVER_TRIM = -1  # mallopt(3): -1 turns trimming the top of the heap off


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for the next step (once per process); False where the C library is
    not glibc (macOS, musl), which is left as it is."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = [
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        mallopt(_M_TRIM_THRESHOLD, NEVER_TRIM),
        mallopt(_M_TOP_PAD, TOP_PAD),
    ]
    return all(x == 1 for x in done)


def _attention_ops() -> set[Any]:
    import torch

    return {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default}


def _save_attention(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in _attention_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context() -> Any:
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_save_attention)


def checkpoint_kwargs(device: Any, selective: bool = True) -> dict[str, Any]:
    """Keyword arguments for torch.utils.checkpoint.checkpoint on `device`. `selective=False` where the
    forward pass gathers parameters (DeepSpeed ZeRO-3): the recompute must run those collectives again,
    and selective checkpointing would look for their results among the saved ones."""
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if selective and getattr(device, "type", device) == "cpu":
        kwargs["context_fn"] = _selective_context
    return kwargs
