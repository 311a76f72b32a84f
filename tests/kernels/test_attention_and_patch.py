"""Packed attention equals each document alone; a patched model computes what the unpatched one does."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dr_kernels import patch, unpatch
from dr_kernels.attention import (
    CPU_FLASH,
    CPU_SHAPE_MULTIPLE,
    boundaries,
    choose_backend,
    cu_seqlens_of,
    packed_attention,
)
from dr_kernels.patch import is_patched

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class RecordOps(TorchDispatchMode):
    """The query length of every CPU flash attention call, and every op with the shape it made."""

    def __init__(self) -> None:
        super().__init__()
        self.attention: list[int] = []
        self.made: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is CPU_FLASH:
            self.attention.append(args[0].shape[2])
        if isinstance(out, torch.Tensor):
            self.made.append((func.overloadpacket.__name__, tuple(out.shape)))
        return out


BACKENDS = ["sdpa", "flex"] + (
    ["flash"] if DEVICE == "cuda" and choose_backend(torch.device("cuda")) == "flash" else []
)


@pytest.mark.parametrize("lengths", [[5, 11, 1, 16], [70, 5, 130]])
@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_attention_equals_each_document_alone(backend, lengths):
    torch.manual_seed(0)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    total = sum(lengths)
    # PyTorch's flex attention has no backward on the CPU: there, its forward is what can be checked
    train = not (backend == "flex" and DEVICE == "cpu")
    q = torch.randn(1, 4, total, 16, device=DEVICE, requires_grad=train)
    k = torch.randn(1, 2, total, 16, device=DEVICE, requires_grad=train)  # grouped-query: 2 kv heads
    v = torch.randn(1, 2, total, 16, device=DEVICE, requires_grad=train)
    # the CPU path records what it runs (flex attention's higher-order op passes no dispatch mode)
    cpu_sdpa = backend == "sdpa" and DEVICE == "cpu"
    forward, backward = RecordOps(), RecordOps()
    with forward if cpu_sdpa else nullcontext():
        out = packed_attention(q, k, v, cu_seqlens_of(lengths, DEVICE), backend=backend)
    start = 0
    alone = []
    for n in lengths:
        piece = slice(start, start + n)
        alone.append(sdpa(q[:, :, piece], k[:, :, piece], v[:, :, piece], is_causal=True, enable_gqa=True))
        start += n
    expected = torch.cat(alone, dim=2)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
    if cpu_sdpa:
        # each document in a window rounded up to CPU_SHAPE_MULTIPLE: the CPU kernels are cached per shape
        assert forward.attention == [-(-n // CPU_SHAPE_MULTIPLE) * CPU_SHAPE_MULTIPLE for n in lengths]
    if not train:
        return
    dy = torch.randn_like(out)
    with backward if cpu_sdpa else nullcontext():
        ours = torch.autograd.grad(out, (q, k, v), dy)
    if cpu_sdpa:
        # each document's gradients are written into the row's, not zero-padded to a whole row per document
        # and summed up, as autograd's backward of the slices does
        summed = [
            (op, shape) for op, shape in backward.made if op in ("slice_backward", "add") and total in shape
        ]
        assert not summed
    theirs = torch.autograd.grad(expected, (q, k, v), dy)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


def test_cpu_packed_attention_runs_in_autocasts_dtype_as_sdpa_does():
    torch.manual_seed(0)
    q = torch.randn(1, 4, 20, 16)  # float32, as a model whose rotary embedding promotes hands it over
    k, v = torch.randn(1, 2, 20, 16), torch.randn(1, 2, 20, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = packed_attention(q, k, v, cu_seqlens_of([8, 12]), backend="sdpa")
        alone = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, :8], k[:, :, :8], v[:, :, :8], is_causal=True, enable_gqa=True
        )
    assert out.dtype == alone.dtype == torch.bfloat16
    # bf16 sums in another order over the rounded window: within one bf16 step at these magnitudes (< 4)
    torch.testing.assert_close(out[:, :, :8], alone, atol=1.6e-2, rtol=0)


def test_document_boundaries_come_from_positions_restarting_at_zero():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert boundaries(positions).tolist() == [0, 3, 5, 9]
    assert cu_seqlens_of([3, 2, 4]).tolist() == [0, 3, 5, 9]


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="choose one of"):
        choose_backend(torch.device("cpu"), "magic")  # type: ignore[arg-type]


def tiny(family: str):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    classes: dict[str, tuple[Any, Any]] = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }
    config_class, model_class = classes[family]
    torch.manual_seed(0)
    config = config_class(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=70,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        max_position_embeddings=256,
        rope_parameters={
            "rope_type": "yarn",
            "factor": 4.0,
            "rope_theta": 10000.0,
            "original_max_position_embeddings": 64,
        },
    )
    return model_class(config).to(DEVICE)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_a_patched_model_gives_the_same_loss_and_gradients_on_a_packed_row(family):
    from dr_train.pack import document_mask

    model = tiny(family)
    ids = torch.randint(0, 97, (1, 23), device=DEVICE)
    positions = torch.tensor([list(range(10)) + list(range(13))], device=DEVICE)
    labels = ids.clone()
    labels[0, 10] = -100  # a document's first token is not predicted from the one before

    def loss_and_grads(**kwargs):
        loss = model(input_ids=ids, position_ids=positions, labels=labels, **kwargs).loss
        loss.backward()
        out = loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        return out

    plain_loss, plain_grads = loss_and_grads(attention_mask=document_mask([0] * 10 + [1] * 13).to(DEVICE))
    patch(model, backend="triton")
    assert is_patched(model) and model.config._attn_implementation == "dr_packed"
    fused_loss, fused_grads = loss_and_grads()  # no mask: the positions say where documents start
    torch.testing.assert_close(fused_loss, plain_loss, atol=1e-5, rtol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_unpatch_restores_the_model_and_generation_agrees_either_way():
    model = tiny("qwen2")
    prompt = torch.randint(0, 97, (1, 6), device=DEVICE)
    before = model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)
    patch(model, backend="triton")
    patched = model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)
    unpatch(model)
    assert not is_patched(model) and model.config._attn_implementation != "dr_packed"
    assert "forward" not in model.model.layers[0].mlp.__dict__  # the class's own forward again
    assert torch.equal(before, patched)
    assert torch.equal(model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False), before)


def test_patch_touches_only_the_model_it_is_given():
    patched, other = tiny("qwen2"), tiny("qwen2")
    patch(patched)
    assert "forward" in patched.model.layers[0].mlp.__dict__
    assert "forward" not in other.model.layers[0].mlp.__dict__
    assert other.config._attn_implementation != "dr_packed"


def test_unsupported_families_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(ValueError, match="supports qwen2, qwen3, llama"):
        patch(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)))
