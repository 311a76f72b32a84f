"""Packing tokenized documents into rows of a fixed token budget.

Positions restart at every document and a document never attends to another (the block-diagonal causal
mask below, or a varlen/flex kernel given the same boundaries), so a packed row trains exactly as its
documents would one by one. The first token of each document carries no loss: nothing precedes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from dr_train.chat import IGNORE, Tokenized

Policy = Literal["drop", "truncate", "split"]


@dataclass
class Row:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    doc_ids: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    def add(self, doc: Tokenized) -> None:
        n = len(doc.input_ids)
        number = self.doc_ids[-1] + 1 if self.doc_ids else 0
        self.input_ids += doc.input_ids
        self.labels += [IGNORE, *doc.labels[1:]]
        self.position_ids += list(range(n))
        self.doc_ids += [number] * n
        self.sources.append(doc.id)


@dataclass
class PackStats:
    documents: int = 0
    rows: int = 0
    dropped: int = 0
    truncated: int = 0
    split: int = 0


def _fit(doc: Tokenized, budget: int, policy: Policy, stats: PackStats) -> list[Tokenized]:
    if len(doc.input_ids) <= budget:
        return [doc]
    if policy == "drop":
        stats.dropped += 1
        return []
    if policy == "truncate":
        stats.truncated += 1
        return [Tokenized(doc.id, doc.input_ids[:budget], doc.labels[:budget])]
    stats.split += 1
    return [
        Tokenized(f"{doc.id}#{i // budget}", doc.input_ids[i : i + budget], doc.labels[i : i + budget])
        for i in range(0, len(doc.input_ids), budget)
    ]


def pack(
    docs: Iterable[Tokenized], budget: int, policy: Policy = "drop", stats: PackStats | None = None
) -> Iterator[Row]:
    """Rows of at most `budget` tokens, documents in order (a row is closed when the next does not fit).
    Documents longer than the budget are dropped, truncated, or split into budget-sized pieces."""
    stats = stats if stats is not None else PackStats()
    row = Row()
    for doc in docs:
        stats.documents += 1
        for piece in _fit(doc, budget, policy, stats):
            if len(row) + len(piece.input_ids) > budget and len(row):
                stats.rows += 1
                yield row
                row = Row()
            row.add(piece)
    if len(row):
        stats.rows += 1
        yield row


def document_mask(doc_ids: Any) -> Any:
    """The (1, 1, T, T) boolean attention mask of a packed row: causal, and within each document only."""
    import torch

    ids = torch.as_tensor(doc_ids)
    same = ids[:, None] == ids[None, :]
    causal = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
    return (same & causal)[None, None]
