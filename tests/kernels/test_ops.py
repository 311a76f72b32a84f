"""Every Triton op against its PyTorch reference: values and gradients, fp32 and bf16, odd shapes.

On a machine without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set in conftest);
on a GPU the same tests run the compiled kernels on CUDA tensors.
"""

from __future__ import annotations

import pytest
import torch

from dr_kernels import reference
from dr_kernels.ops.linear_ce import label_logprobs, linear_cross_entropy
from dr_kernels.ops.rms_norm import add_rms_norm, rms_norm
from dr_kernels.ops.rope import rope
from dr_kernels.ops.swiglu import swiglu

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (atol, rtol): fp32 kernels differ from the reference by summation order only; bf16 results are rounded
# once in the kernel but after every op in the reference, so they may differ by an ulp or two of bf16.
TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (6e-2, 2e-2)}
DTYPES = [torch.float32, torch.bfloat16]


def close(actual, expected, dtype, scale=1.0):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol * scale, rtol=rtol)


def grads(outputs, inputs, cotangents):
    return torch.autograd.grad(outputs, inputs, cotangents)


def leaf(*shape, dtype, scale=1.0, offset=0.0):
    return (torch.randn(*shape, device=DEVICE) * scale + offset).to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 37), (2, 5, 70), (1, 1, 129)])
def test_rms_norm_matches_the_reference(dtype, shape):
    torch.manual_seed(0)
    x, w = leaf(*shape, dtype=dtype), leaf(shape[-1], dtype=dtype, scale=0.1, offset=1.0)
    ours, theirs = rms_norm(x, w, 1e-6, backend="triton"), reference.rms_norm(x, w, 1e-6)
    close(ours, theirs, dtype)
    dy = torch.randn_like(ours)
    for a, b in zip(grads(ours, (x, w), dy), grads(theirs, (x, w), dy), strict=True):
        close(a, b, dtype, scale=4)  # the weight's gradient sums over every row


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_residual_add_fused_with_rms_norm_matches_add_then_norm(dtype):
    torch.manual_seed(1)
    x, r = leaf(4, 7, 45, dtype=dtype), leaf(4, 7, 45, dtype=dtype)
    w = leaf(45, dtype=dtype, scale=0.1, offset=1.0)
    (normed, summed), (ref_normed, ref_summed) = (
        add_rms_norm(x, r, w, backend="triton"),
        reference.add_rms_norm(x, r, w),
    )
    close(normed, ref_normed, dtype)
    close(summed, ref_summed, dtype)
    dn, ds = torch.randn_like(normed), torch.randn_like(summed)
    ours = grads((normed, summed), (x, r, w), (dn, ds))
    theirs = grads((ref_normed, ref_summed), (x, r, w), (dn, ds))
    for a, b in zip(ours, theirs, strict=True):
        close(a, b, dtype, scale=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 41), (2, 3, 1031)])
def test_swiglu_matches_the_reference(dtype, shape):
    torch.manual_seed(2)
    gate, up = leaf(*shape, dtype=dtype, scale=3), leaf(*shape, dtype=dtype)
    ours, theirs = swiglu(gate, up, backend="triton"), reference.swiglu(gate, up)
    close(ours, theirs, dtype)
    dy = torch.randn_like(ours)
    for a, b in zip(grads(ours, (gate, up), dy), grads(theirs, (gate, up), dy), strict=True):
        close(a, b, dtype)


def hf_rotary(rope_parameters, head_dim=12, max_positions=64):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        rope_parameters=rope_parameters,
    )
    return LlamaRotaryEmbedding(config).to(DEVICE)


ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0},
    "yarn": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 16,
    },
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(ROPES))
def test_rope_from_position_ids_matches_hugging_face_for_every_scaling(dtype, kind):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(3)
    rotary = hf_rotary(ROPES[kind])
    # a packed row (positions restart per document) and an ordinary one, past the original length
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3], list(range(60, 72))], device=DEVICE)
    q = torch.randn(2, 12, 5, 12, device=DEVICE).to(dtype).transpose(1, 2).requires_grad_()  # HF's layout
    k = leaf(2, 3, 12, 12, dtype=dtype)
    cos, sin = rotary(q, positions)  # also updates dynamic NTK's frequencies for this length
    theirs = apply_rotary_pos_emb(q, k, cos, sin)
    ours = rope(q, k, positions, rotary.inv_freq, rotary.attention_scaling, backend="triton")
    for a, b in zip(ours, theirs, strict=True):
        close(a, b, dtype)
    dq, dk = torch.randn_like(ours[0]), torch.randn_like(ours[1])
    for a, b in zip(grads(ours, (q, k), (dq, dk)), grads(theirs, (q, k), (dq, dk)), strict=True):
        close(a, b, dtype)


CE_CASES = [
    {"reduction": "mean"},
    {"reduction": "sum", "label_smoothing": 0.1},
    {"reduction": "mean", "z_loss": 1e-3, "mask": True},
    {"reduction": "none", "bias": True},
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CE_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_fused_linear_cross_entropy_matches_the_full_logits(dtype, case, backend):
    torch.manual_seed(4)
    tokens, hidden, vocab = 53, 40, 307
    h, w = leaf(tokens, hidden, dtype=dtype), leaf(vocab, hidden, dtype=dtype, scale=0.2)
    b = leaf(vocab, dtype=dtype, scale=0.1) if case.get("bias") else None
    labels = torch.randint(0, vocab, (tokens,), device=DEVICE)
    labels[::7] = -100
    mask = torch.rand(tokens, device=DEVICE) if case.get("mask") else None
    kwargs = {
        "reduction": case["reduction"],
        "label_smoothing": case.get("label_smoothing", 0.0),
        "z_loss": case.get("z_loss", 0.0),
        "loss_mask": mask,
    }
    ours = linear_cross_entropy(h, w, labels, bias=b, chunk_size=16, backend=backend, **kwargs)
    theirs = reference.linear_cross_entropy(h, w, labels, bias=b, **kwargs)
    close(ours, theirs, dtype, scale=0.1)
    inputs = (h, w) if b is None else (h, w, b)
    cotangent = torch.randn_like(ours) if case["reduction"] == "none" else torch.ones_like(ours)
    if case["reduction"] == "none":
        assert (ours[labels == -100] == 0).all()
    for a, c in zip(grads(ours, inputs, cotangent), grads(theirs, inputs, cotangent), strict=True):
        close(a, c, dtype, scale=0.1)


def test_label_logprobs_are_the_log_softmax_at_the_labels():
    torch.manual_seed(5)
    h, w = torch.randn(9, 16, device=DEVICE), torch.randn(33, 16, device=DEVICE)
    labels = torch.randint(0, 33, (9,), device=DEVICE)
    labels[4] = -100
    expected = torch.log_softmax(h @ w.T, -1).gather(-1, labels.clamp(min=0)[:, None])[:, 0]
    expected[4] = 0
    torch.testing.assert_close(label_logprobs(h, w, labels, backend="triton"), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_fused_cross_entropy_mean_is_the_mask_weighted_mean(backend):
    torch.manual_seed(6)
    h, w = torch.randn(6, 16, device=DEVICE), torch.randn(33, 16, device=DEVICE)
    labels = torch.randint(0, 33, (6,), device=DEVICE)
    mask = torch.tensor([0.1, 0.2, 0.0, 0.1, 0.0, 0.05], device=DEVICE)  # sums to 0.45, below 1
    per_token = linear_cross_entropy(h, w, labels, reduction="none", backend=backend)
    expected = (per_token * mask).sum() / mask.sum()
    for fn in (linear_cross_entropy, reference.linear_cross_entropy):
        kw = {"backend": backend} if fn is linear_cross_entropy else {}
        torch.testing.assert_close(fn(h, w, labels, loss_mask=mask, **kw), expected, atol=1e-5, rtol=1e-5)
        assert fn(h, w, labels, loss_mask=torch.zeros(6, device=DEVICE), **kw).item() == 0.0


@pytest.mark.skipif(DEVICE != "cpu", reason="the PyTorch path's autocast handling (the CPU's)")
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_fused_cross_entropy_under_cpu_autocast_multiplies_in_bf16_and_matches_autocast(reduction):
    """Under bf16 autocast every matmul of the fused loss runs in bf16, as autocast runs the plain head
    (before, the two gradient matmuls ran in fp32 and the whole weight was cast again for every chunk),
    and loss and gradients match the reference computed under the same autocast."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Matmuls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
                self.dtypes.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(7)
    tokens, hidden, vocab = 70, 32, 301
    h, w = leaf(tokens, hidden, dtype=torch.float32), leaf(vocab, hidden, dtype=torch.float32, scale=0.2)
    labels = torch.randint(0, vocab, (tokens,))
    labels[::5] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with Matmuls() as seen:
            ours = linear_cross_entropy(h, w, labels, reduction=reduction, chunk_size=16, backend="torch")
            cotangent = torch.randn_like(ours) if reduction == "none" else torch.ones_like(ours)
            ours_grads = grads(ours, (h, w), cotangent)
        theirs = reference.linear_cross_entropy(h, w, labels, reduction=reduction)
    assert seen.dtypes and all(set(d) == {torch.bfloat16} for d in seen.dtypes), seen.dtypes
    # the gradients reach the fp32 leaves in fp32
    assert all(g.dtype == torch.float32 for g in ours_grads)
    close(ours, theirs, torch.bfloat16, scale=0.1)
    for a, c in zip(ours_grads, grads(theirs, (h, w), cotangent), strict=True):
        close(a, c, torch.bfloat16, scale=0.1)


def test_the_cpu_takes_larger_loss_chunks_than_the_gpu():
    from dr_kernels.ops.linear_ce import _chunk_size

    # a 135M model's shapes (hidden 576, 49,152 tokens of vocabulary) on a 4,096-token row
    assert _chunk_size(4096, 576, 49152) == 64
    assert _chunk_size(4096, 576, 49152, cpu=True) == 512
    assert _chunk_size(100, 576, 49152, cpu=True) == 100  # never more than the row


def test_large_cpu_inputs_run_the_compiled_ops_with_the_reference_values(monkeypatch):
    """On the CPU the PyTorch path compiles the elementwise ops (for inputs of MIN_ELEMENTS and up); each
    gives the reference's values and gradients, and one that fails to compile falls back to the plain ops."""
    from dr_kernels.ops import compiled

    if not compiled._compiler_present():
        pytest.skip("no C++ compiler for inductor")
    monkeypatch.setattr(compiled, "MIN_ELEMENTS", 64)
    monkeypatch.delenv("DR_COMPILE", raising=False)
    used: list[str] = []
    build = compiled._compiled

    def recording(name):
        used.append(name)
        return build(name)

    monkeypatch.setattr(compiled, "_compiled", recording)
    torch.manual_seed(0)
    x, residual = (torch.randn(4, 33, 48).requires_grad_() for _ in range(2))
    weight = (torch.randn(48) + 1).requires_grad_()
    gate, up = (torch.randn(4, 33, 96).requires_grad_() for _ in range(2))
    cases = [
        (lambda: rms_norm(x, weight, 1e-6, backend="torch"), lambda: reference.rms_norm(x, weight, 1e-6)),
        (
            lambda: add_rms_norm(x, residual, weight, 1e-6, backend="torch")[0],
            lambda: reference.add_rms_norm(x, residual, weight, 1e-6)[0],
        ),
        (lambda: swiglu(gate, up, backend="torch"), lambda: reference.swiglu(gate, up)),
    ]
    inputs = (x, residual, weight, gate, up)
    for fused, plain in cases:
        out, expected = fused(), plain()
        close(out, expected, torch.float32)
        cotangent = torch.randn_like(out)
        got = torch.autograd.grad(out, inputs, cotangent, allow_unused=True)
        want = torch.autograd.grad(expected, inputs, cotangent, allow_unused=True)
        for g, w in zip(got, want, strict=True):
            assert (g is None) == (w is None)
            if g is not None:
                close(g, w, torch.float32)
    assert used == ["rms_norm", "add_rms_norm", "swiglu"]

    def broken(name):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(compiled, "_compiled", broken)
    monkeypatch.setattr(compiled, "_failed", set())
    close(swiglu(gate, up, backend="torch"), reference.swiglu(gate, up), torch.float32)
    assert compiled._failed == {"swiglu"}
