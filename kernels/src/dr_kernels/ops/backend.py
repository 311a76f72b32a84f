"""Where an op runs: its Triton kernel (on a GPU, or on the CPU under TRITON_INTERPRET=1 when asked for),
or its PyTorch implementation. `DR_KERNELS=torch|triton` or the `backend=` argument overrides the choice.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Literal

import torch

Backend = Literal["triton", "torch"]

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton wheel for this platform: the PyTorch implementations still run
    import math
    import types

    triton = types.SimpleNamespace(
        jit=lambda fn: fn,
        cdiv=lambda a, b: -(-a // b),
        next_power_of_2=lambda n: 1 << max(0, math.ceil(math.log2(max(n, 1)))),
    )
    tl = types.SimpleNamespace(constexpr=None)  # kernel signatures name tl.constexpr


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def choose(tensor: torch.Tensor, backend: str | None = None) -> Backend:
    """Triton for CUDA tensors; PyTorch on the CPU unless Triton is asked for (the interpreter, for tests)."""
    chosen = backend or os.environ.get("DR_KERNELS") or None
    if chosen not in (None, "triton", "torch"):
        raise ValueError(f"kernel backend {chosen!r}: choose triton or torch")
    if chosen == "torch":
        return "torch"
    usable = triton_available() and (tensor.is_cuda or (tensor.device.type == "cpu" and interpreting()))
    if chosen == "triton":
        if not usable:
            raise ValueError(
                "the triton backend needs triton and a CUDA tensor (or TRITON_INTERPRET=1 on the CPU)"
            )
        return "triton"
    return "triton" if usable and tensor.is_cuda else "torch"


def block_size(n: int) -> int:
    return triton.next_power_of_2(max(n, 1))
