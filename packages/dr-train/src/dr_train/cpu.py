"""Gradient checkpointing on the CPU keeps each layer's attention output (`checkpoint_kwargs`).

Recomputing a layer in the backward pass then skips attention, the costliest part of the recompute on a
CPU, for layers × tokens × hidden of bf16 (150 MB for SmolLM2-135M at 4,096 tokens); the policy is
PyTorch's selective activation checkpointing. A GPU run keeps plain checkpointing, and so does DeepSpeed
ZeRO-3 on the CPU.

Not done: keeping freed memory in the process (glibc's mallopt: no trimming, a 256 MB mmap threshold)
saved the page faults of each step's activations, 2-3% of a step, but resident memory then grew by
0.2 GiB a step, twice as fast as without it (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _attention_op() -> Any:
    from dr_kernels.attention import CPU_FLASH

    return CPU_FLASH


def _save_attention(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    """The policy, asked for every op of a checkpointed layer's forward pass."""
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op is _attention_op() else CheckpointPolicy.PREFER_RECOMPUTE


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
