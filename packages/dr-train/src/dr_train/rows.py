"""Packed rows as tensors: the batch of one row, its FLOPs, its Ulysses slice, and its summed loss."""

from __future__ import annotations

import random
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from dr_kernels.attention import CPU_SHAPE_MULTIPLE
from dr_train import seeds
from dr_train.chat import IGNORE
from dr_train.pack import Row, document_mask


def epoch_order(rows: int, seed: int, epoch: int) -> list[int]:
    order = list(range(rows))
    random.Random(seeds.epoch_order(seed, epoch)).shuffle(order)
    return order


def row_tensors(row: Row, device: Any, pad_id: int = 0) -> dict[str, Any]:
    """One packed row as a batch of one. On the CPU it is padded to a multiple of `CPU_SHAPE_MULTIPLE`
    tokens (see `pad_row`): the CPU's matmul kernels are compiled and cached for each length."""
    batch = {
        "input_ids": torch.tensor([row.input_ids], device=device),
        "position_ids": torch.tensor([row.position_ids], device=device),
        "labels": torch.tensor([*row.labels[1:], IGNORE], device=device),
        "doc_lengths": document_lengths(row),
    }
    if torch.device(device).type == "cpu":
        batch = pad_row(batch, CPU_SHAPE_MULTIPLE, pad_id)
    return batch


def row_flops(row: Row, params: int, layers: int, hidden: int) -> float:
    """Training FLOPs of one row: 6·params per token plus causal attention within each document."""
    squares = sum(n * n for n in document_lengths(row))
    return 6.0 * params * len(row) + 6.0 * layers * hidden * squares


def document_lengths(row: Row) -> list[int]:
    lengths: dict[int, int] = {}
    for doc in row.doc_ids:
        lengths[doc] = lengths.get(doc, 0) + 1
    return list(lengths.values())


def pad_row(batch: dict[str, Any], multiple: int, pad_id: int) -> dict[str, Any]:
    """The row padded to a multiple of `multiple` tokens with a document of its own (positions from 0, no
    labels), so the padding attends to nothing real and adds nothing to the loss."""
    ids, positions, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    pad = -ids.shape[1] % multiple
    if not pad:
        return batch
    device = ids.device
    return {
        "input_ids": torch.cat([ids, torch.full((1, pad), pad_id, dtype=ids.dtype, device=device)], dim=1),
        "position_ids": torch.cat([positions, torch.arange(pad, device=device)[None]], dim=1),
        "labels": torch.cat([labels, torch.full((pad,), IGNORE, dtype=labels.dtype, device=device)]),
        "doc_lengths": [*batch["doc_lengths"], pad],
    }


def shard(batch: dict[str, Any], sp: int, sp_rank: int, pad_id: int) -> dict[str, Any]:
    """This rank's contiguous slice of a packed row for Ulysses sequence parallelism.

    The row is first padded to a multiple of `sp` (`pad_row`). `doc_lengths` stays the whole row's:
    attention runs on the whole sequence once DeepSpeed's all-to-all has gathered it (a slice of the heads
    on each rank).
    """
    batch = pad_row(batch, sp, pad_id)
    ids, positions, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    lengths = batch["doc_lengths"]
    size = ids.shape[1] // sp
    part = slice(sp_rank * size, (sp_rank + 1) * size)
    return {
        "input_ids": ids[:, part],
        "position_ids": positions[:, part],
        "labels": labels[part],
        "doc_lengths": lengths,
    }


def learnt_only(hidden: Any, labels: Any) -> tuple[Any, Any]:
    """The hidden states and labels of the tokens that count in the loss.

    An SFT row learns only its assistant turns (a fifth of the tokens of a research trajectory), so the
    output layer and the loss, the largest matmul of a small model, need not run on the rest. The summed
    loss and every gradient stay the same. Used on the CPU only: picking the rows makes a GPU wait.

    The learnt tokens are topped up with unlearnt ones (which the loss ignores) to a multiple of
    `CPU_SHAPE_MULTIPLE`, so that the output layer's matmuls see few shapes."""
    keep = labels != IGNORE
    if bool(keep.all()):
        return hidden, labels
    index = keep.nonzero().flatten()
    extra = min(-index.numel() % CPU_SHAPE_MULTIPLE, labels.numel() - index.numel())
    if extra:
        index = torch.cat([index, (~keep).nonzero().flatten()[:extra]])
    return hidden.index_select(0, index), labels.index_select(0, index)


def token_losses(model: Any, batch: dict[str, Any], kernels: bool, zero3: bool) -> Any:
    """Summed cross-entropy of one packed row (targets already shifted into `labels`)."""
    if kernels:
        from dr_kernels import linear_cross_entropy
        from dr_kernels.attention import cu_seqlens_of

        cu = cu_seqlens_of(batch["doc_lengths"], batch["input_ids"].device)
        longest = max(batch["doc_lengths"])
        hidden = model.model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=longest,
            max_length_k=longest,
        ).last_hidden_state[0]
        labels = batch["labels"]
        if hidden.device.type == "cpu":
            hidden, labels = learnt_only(hidden, labels)
        head = model.lm_head
        gather = nullcontext()
        if zero3:
            import deepspeed

            # ZeRO-3 partitions the head; its weight is whole only inside this context
            gather = deepspeed.zero.GatheredParameters([head.weight], modifier_rank=None)
        with gather:
            return linear_cross_entropy(hidden, head.weight, labels, bias=head.bias, reduction="sum")
    lengths = batch["doc_lengths"]
    mask = None
    if len(lengths) > 1:
        docs = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        mask = document_mask(docs).to(batch["input_ids"].device)
    logits = model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask
    ).logits
    return F.cross_entropy(logits[0].float(), batch["labels"], ignore_index=IGNORE, reduction="sum")
