"""A training step on the CPU: the loss only on learnt tokens, attention kept through checkpointing, lengths
rounded for the CPU's kernel caches; each with the same gradients as the plain step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dr_kernels
from dr_core.records import Example, Message
from dr_kernels.attention import CPU_FLASH as FLASH
from dr_train.chat import IGNORE
from dr_train.data import build_dataset, item_texts, read_items
from dr_train.model import RopeSettings, build
from dr_train.rows import document_lengths
from dr_train.tiny import CHAT_TEMPLATE
from dr_train.trainer import TrainConfig, Trainer

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
MULTIPLE = dr_kernels.attention.CPU_SHAPE_MULTIPLE


def rounded(n: int) -> int:
    return -(-n // MULTIPLE) * MULTIPLE


def trainer_for(tmp_path: Path, **overrides) -> Trainer:
    """A tiny model's trainer on rows that pack three chats each (the loss on the answers alone)."""
    records = [
        Example(
            messages=[
                Message(role="system", content="You research."),
                Message(role="user", content=f"Question {i}: who founded the city of {city}?"),
                Message(role="assistant", content=f"{city} was founded by its {i}th mayor."),
            ]
        ).model_dump(mode="json")
        for i, city in enumerate(["Velmora", "Ostrand", "Quillby", "Harrowgate", "Tessaly", "Brindle"])
    ]
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = tmp_path / "data.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    items = read_items([str(source)], "sft")
    model, tokenizer = build(
        "tiny:qwen2", None, lambda: item_texts(items, CHAT_TEMPLATE), RopeSettings(), seed=0, vocab_size=300
    )
    data = build_dataset(items, tokenizer, "sft", 256, "drop")
    config = TrainConfig(stage="sft", out=tmp_path / "run", max_len=256, lr=1e-3, **overrides)
    return Trainer(model, tokenizer, data, config)


def gradients(trainer: Trainer, index: int = 0) -> tuple[float, dict[str, torch.Tensor]]:
    row = trainer.data.rows[index]
    learnt = sum(1 for x in row.labels if x != IGNORE)
    loss, _ = trainer.forward_backward([row], learnt)
    grads = {n: p.grad.clone() for n, p in trainer.module.named_parameters() if p.grad is not None}
    trainer.module.zero_grad(set_to_none=True)
    return loss, grads


class RecordShapes(TorchDispatchMode):
    """Every size the matmuls and the attention kernel are called with."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: set[int] = set()
        self.attention: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS or func is FLASH:
            for arg in args:
                if isinstance(arg, torch.Tensor):
                    self.sizes.update(arg.shape)
        if func is FLASH:
            self.attention.append(args[0].shape[2])
        return func(*args, **(kwargs or {}))


def unrounded(sizes: set[int], trainer: Trainer) -> set[int]:
    """The sizes that are neither the model's own nor a multiple of the CPU's shape multiple."""
    config = trainer.module.config
    head_dim = config.hidden_size // config.num_attention_heads
    model = {1, head_dim, config.hidden_size, config.intermediate_size, config.vocab_size}
    model |= {config.num_attention_heads, config.num_key_value_heads, config.num_key_value_heads * head_dim}
    return {n for n in sizes - model if n % MULTIPLE}


class CountAttention(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is FLASH:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_the_output_layer_and_loss_run_on_the_learnt_tokens_alone(tmp_path, monkeypatch):
    trainer = trainer_for(tmp_path)
    row = trainer.data.rows[1]
    learnt = sum(1 for x in row.labels[1:] if x != IGNORE)  # the labels a row's tokens predict
    assert 0 < learnt < len(row) // 2 and learnt % MULTIPLE
    seen: list[int] = []
    fused = dr_kernels.linear_cross_entropy

    def recording(hidden, *args, **kwargs):
        seen.append(hidden.shape[0])
        return fused(hidden, *args, **kwargs)

    monkeypatch.setattr(dr_kernels, "linear_cross_entropy", recording)
    loss, grads = gradients(trainer, 1)
    # topped up with unlearnt tokens to the CPU's shape multiple
    assert seen == [rounded(learnt)] and rounded(learnt) < len(row)

    # the same loss and gradients as the head over every token of the row
    monkeypatch.setattr("dr_train.rows.learnt_only", lambda hidden, labels: (hidden, labels))
    full_loss, full_grads = gradients(trainer, 1)
    assert seen == [rounded(learnt), rounded(len(row))]
    assert loss == pytest.approx(full_loss, rel=1e-5)
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6)


def test_checkpointing_on_the_cpu_keeps_attention_and_recomputes_the_rest(tmp_path):
    plain = trainer_for(tmp_path / "plain", grad_ckpt=False)
    row = plain.data.rows[0]
    docs = len(set(row.doc_ids)) + (len(row) % MULTIPLE != 0)  # the padding is a document of its own
    layers = plain.module.config.num_hidden_layers
    with CountAttention() as counted:
        loss, grads = gradients(plain)
    assert counted.calls == layers * docs

    checkpointed = trainer_for(tmp_path / "ckpt", grad_ckpt=True)
    with CountAttention() as counted:
        ckpt_loss, ckpt_grads = gradients(checkpointed)
    assert counted.calls == layers * docs  # not run again when a layer is recomputed
    assert ckpt_loss == pytest.approx(loss, rel=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-5, atol=1e-7)


def test_the_cpu_kernels_see_only_lengths_rounded_to_the_shape_multiple(tmp_path, monkeypatch):
    """The CPU's matmul and attention kernels are compiled and cached per shape: a row or document of a new
    length each step meant a compile each step and caches that grew without end."""
    trainer = trainer_for(tmp_path)
    row = trainer.data.rows[1]
    lengths = set(document_lengths(row)) | {len(row)}
    assert any(n % MULTIPLE for n in lengths)
    with RecordShapes() as recorded:
        loss, grads = gradients(trainer, 1)
    assert recorded.attention and all(n % MULTIPLE == 0 for n in recorded.attention)
    assert not unrounded(recorded.sizes, trainer), sorted(recorded.sizes)

    # the same loss and gradients as the step on the lengths as they are
    monkeypatch.setattr(dr_kernels.attention, "CPU_SHAPE_MULTIPLE", 1)
    monkeypatch.setattr("dr_train.rows.CPU_SHAPE_MULTIPLE", 1)
    with RecordShapes() as recorded:
        exact_loss, exact_grads = gradients(trainer, 1)
    assert lengths & recorded.sizes  # the comparison did run on the raw lengths
    assert loss == pytest.approx(exact_loss, rel=1e-5)
    for name, grad in exact_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6)


def test_rl_log_probabilities_on_the_cpu_run_on_rounded_lengths_with_the_same_values(tmp_path, monkeypatch):
    from dr_train.rl.rollouts import Sequence
    from dr_train.rl.update import forward

    trainer = trainer_for(tmp_path)
    row = trainer.data.rows[1]
    ids = row.input_ids
    assert len(ids) % MULTIPLE
    targets = [*ids[1:], IGNORE]
    targets[: len(ids) // 2] = [IGNORE] * (len(ids) // 2)  # the prompt half was not sampled
    seq = Sequence(0, ids, targets)
    with RecordShapes() as recorded:
        logprobs, _ = forward(trainer.module, seq, kernels=True)
    assert recorded.attention and all(n % MULTIPLE == 0 for n in recorded.attention)
    # the trunk runs on a rounded length; the output layer on the sampled tokens alone, as they are
    assert not unrounded(recorded.sizes - {len(ids) - len(ids) // 2 - 1}, trainer), sorted(recorded.sizes)
    assert logprobs.shape == (len(ids) - len(ids) // 2 - 1,)
    grads = torch.autograd.grad(logprobs.sum(), list(trainer.module.parameters()), allow_unused=True)

    monkeypatch.setattr(dr_kernels.attention, "CPU_SHAPE_MULTIPLE", 1)
    exact, _ = forward(trainer.module, seq, kernels=True)
    torch.testing.assert_close(logprobs, exact, rtol=1e-5, atol=1e-6)
    exact_grads = torch.autograd.grad(exact.sum(), list(trainer.module.parameters()), allow_unused=True)
    for ours, theirs in zip(grads, exact_grads, strict=True):
        if theirs is not None:
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
