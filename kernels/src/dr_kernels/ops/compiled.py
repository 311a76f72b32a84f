"""The PyTorch implementations of the elementwise ops, fused by torch.compile for large CPU inputs.

On the CPU there are no Triton kernels: RMSNorm, the residual add before it and SwiGLU run as PyTorch
ops, each a pass over memory (RMSNorm forward and backward alone are about a dozen). Inductor fuses each
op's passes into one loop; for SmolLM2-135M at 4,096 tokens that is ~4% of a training step on 2 cores
(docs/benchmarks.md). Compiling costs seconds once per process, so only inputs of at least
`MIN_ELEMENTS` go through it: a tiny model's step runs the plain ops. The compiled ops compute what
`dr_kernels.reference` computes; `DR_COMPILE=0` turns them off, and they are off where no C++ compiler
is found (inductor needs one) or after an op failed to compile in its first forward call (a failure
while compiling its backward is not caught: `DR_COMPILE=0` is the way round it).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

import torch

from dr_kernels import reference

MIN_ELEMENTS = 1 << 20
logger = logging.getLogger("dr_kernels")
_failed: set[str] = set()


@functools.cache
def _compiler_present() -> bool:
    return shutil.which(os.environ.get("CXX", "g++")) is not None or shutil.which("c++") is not None


@functools.cache
def _compiled(name: str) -> Callable[..., Any]:
    return torch.compile(getattr(reference, name), dynamic=True)


def wanted(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.numel() >= MIN_ELEMENTS
        and os.environ.get("DR_COMPILE", "1") != "0"
        and _compiler_present()
    )


def run(name: str, *args: Any) -> Any:
    """`reference.<name>(*args)`, compiled when the first argument is a large CPU tensor."""
    if name not in _failed and wanted(args[0]):
        try:
            return _compiled(name)(*args)
        except Exception as exc:  # inductor could not build it here: the plain ops from now on
            _failed.add(name)
            logger.warning("dr_kernels: %s runs uncompiled (%s)", name, str(exc).splitlines()[0][:200])
    return getattr(reference, name)(*args)
