"""Swap dr_kernels' ops into an already-built Hugging Face model, and back.

Only the model given changes: its attention implementation (a name of our own in transformers' registry,
which models that do not ask for it never see) and the `forward` of its own module instances (norms, MLPs,
attention, decoder layers), never the transformers classes. Supported: Qwen2 / Qwen2.5, Qwen3 and Llama.

What runs once patched: packed-sequence attention (documents in one row never see each other), RMSNorm
and the residual add fused with the norm after attention, rotary embedding from `position_ids` in one
kernel for q and k, and SwiGLU. The loss stays the caller's: `linear_cross_entropy` on the hidden states.
"""

from __future__ import annotations

import types
from typing import Any

ATTENTION = "dr_packed"
FAMILIES = ("qwen2", "qwen3", "llama")


def _register() -> None:
    from transformers import AttentionInterface

    from dr_kernels.attention import hf_packed_attention

    # Left out of the mask registry on purpose, so transformers builds no (T × T) mask for it.
    AttentionInterface.register(ATTENTION, hf_packed_attention)


def supported(model: Any) -> bool:
    return getattr(model.config, "model_type", None) in FAMILIES


def _norm_forward(backend: str | None):
    from dr_kernels.ops.rms_norm import rms_norm

    def forward(self, hidden_states):
        return rms_norm(hidden_states, self.weight, self.variance_epsilon, backend=backend)

    return forward


def _mlp_forward(backend: str | None):
    from dr_kernels.ops.swiglu import swiglu

    def forward(self, x):
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x), backend=backend))

    return forward


def _attention_forward(rotary: Any, backend: str | None):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from dr_kernels.ops.rope import rope

    def forward(
        self, hidden_states, position_embeddings, attention_mask, past_key_values=None, cache=None, **kwargs
    ):
        # the KV cache is `cache` from transformers 5.24, `past_key_values` before
        past_key_values = cache if cache is not None else past_key_values
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape)
        key = self.k_proj(hidden_states).view(hidden_shape)
        if hasattr(self, "q_norm"):  # Qwen3 normalizes each head before the rotation
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = query.transpose(1, 2), key.transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            batch, tokens = input_shape
            start = past_key_values.get_seq_length(self.layer_idx) if past_key_values is not None else 0
            position_ids = (start + _arange(tokens, hidden_states.device))[None].expand(batch, -1)
        # the model's rotary module has already updated inv_freq for this call (dynamic NTK does)
        query, key = rope(
            query, key, position_ids, rotary.inv_freq, rotary.attention_scaling, backend=backend
        )
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        attend = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
        extra = {"sliding_window": self.sliding_window} if getattr(self, "sliding_window", None) else {}
        out, weights = attend(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **extra,
            **kwargs,
        )
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights

    return forward


def _arange(n: int, device: Any) -> Any:
    import torch

    return torch.arange(n, device=device)


def _layer_forward(backend: str | None):
    from dr_kernels.ops.rms_norm import add_rms_norm

    # transformers' decoder-layer signature, its arguments passed on to the attention as they came: the
    # parameters repeat in that call deliberately
    def forward(
        self,
        hidden_states,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache=False,
        position_embeddings=None,
        cache=None,
        **kwargs,
    ):
        past_key_values = cache if cache is not None else past_key_values
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, _ = self.self_attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        norm = self.post_attention_layernorm
        if norm.weight.numel() == residual.shape[-1]:
            # the residual add and the norm after it, in one pass
            hidden_states, residual = add_rms_norm(
                hidden_states, residual, norm.weight, norm.variance_epsilon, backend=backend
            )
        else:  # the weight is partitioned (DeepSpeed ZeRO-3): only the norm's own call gathers it
            residual = residual + hidden_states
            hidden_states = norm(residual)
        return residual + self.mlp(hidden_states)

    return forward


def patch(model: Any, backend: str | None = None, attention: bool = True) -> Any:
    """Use dr_kernels in `model` (in place; returned for chaining). `backend` forces triton or torch ops
    (default: Triton on a GPU, PyTorch on the CPU); `attention=False` keeps the model's attention."""
    if not supported(model):
        raise ValueError(
            f"dr_kernels.patch supports {', '.join(FAMILIES)} models, not {model.config.model_type!r}"
        )
    if is_patched(model):
        return model
    saved: dict[str, Any] = {"attention": model.config._attn_implementation, "modules": []}
    base = model.model
    rotary = base.rotary_emb
    replacements = []
    for layer in base.layers:
        replacements.append((layer, _layer_forward(backend)))
        replacements.append((layer.self_attn, _attention_forward(rotary, backend)))
        replacements.append((layer.mlp, _mlp_forward(backend)))
        for name in ("input_layernorm", "post_attention_layernorm"):
            replacements.append((getattr(layer, name), _norm_forward(backend)))
        for name in ("q_norm", "k_norm"):
            if hasattr(layer.self_attn, name):
                replacements.append((getattr(layer.self_attn, name), _norm_forward(backend)))
    replacements.append((base.norm, _norm_forward(backend)))
    for module, forward in replacements:
        saved["modules"].append((module, module.__dict__.get("forward")))
        module.forward = types.MethodType(forward, module)
    if attention:
        _register()
        model.set_attn_implementation(ATTENTION)
    model._dr_kernels_saved = saved
    return model


def unpatch(model: Any) -> Any:
    """Undo `patch`: the model computes exactly as it did before."""
    saved = getattr(model, "_dr_kernels_saved", None)
    if saved is None:
        return model
    for module, forward in saved["modules"]:
        if forward is None:
            del module.forward
        else:
            module.forward = forward
    if model.config._attn_implementation != saved["attention"]:
        model.set_attn_implementation(saved["attention"])
    model._dr_kernels_saved = None
    return model


def is_patched(model: Any) -> bool:
    return getattr(model, "_dr_kernels_saved", None) is not None
