"""Swap dr_kernels' ops into an already-built Hugging Face model, and back.

Only the model given is changed (its attention implementation and its modules' forward functions), never
the transformers library for everyone else. Supported: Qwen2 / Qwen2.5, Qwen3 and Llama families.
"""

from __future__ import annotations

from typing import Any

ATTENTION = "dr_packed"
FAMILIES = ("qwen2", "qwen3", "llama")


def _register() -> None:
    from transformers import AttentionInterface

    from dr_kernels.attention import hf_packed_attention

    # A name of our own in the registry: models that do not ask for it are untouched. It is left out of the
    # mask registry on purpose, so transformers builds no (T × T) mask for it.
    AttentionInterface.register(ATTENTION, hf_packed_attention)


def supported(model: Any) -> bool:
    return getattr(model.config, "model_type", None) in FAMILIES


def patch(model: Any) -> Any:
    """Use packed-sequence attention (documents in one row never see each other) in `model`."""
    if not supported(model):
        raise ValueError(
            f"dr_kernels.patch supports {', '.join(FAMILIES)} models, not {model.config.model_type!r}"
        )
    if getattr(model, "_dr_kernels_saved", None) is not None:
        return model
    _register()
    saved = {"attention": model.config._attn_implementation}
    model.set_attn_implementation(ATTENTION)
    model._dr_kernels_saved = saved
    return model


def unpatch(model: Any) -> Any:
    """Undo `patch`: the model computes exactly as it did before."""
    saved = getattr(model, "_dr_kernels_saved", None)
    if saved is None:
        return model
    model.set_attn_implementation(saved["attention"])
    model._dr_kernels_saved = None
    return model


def is_patched(model: Any) -> bool:
    return getattr(model, "_dr_kernels_saved", None) is not None
