"""Training records to token rows: read JSONL, tokenize with the model's own tokenizer, pack.

Mid-training learns every token: plain documents (`text`) and whole rendered conversations (tool-using
trajectories included). SFT learns only the assistant turns of chat examples; any record `dr data sft`
accepts (examples, trajectories, plans, reports) is turned into one on the way in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dr_core.errors import InputError
from dr_core.jsonl import OnError, RejectWriter, read_records
from dr_core.llm import to_wire
from dr_core.log import logger
from dr_core.records import Example
from dr_train.chat import IGNORE, Tokenized, tokenize_example
from dr_train.config import LongPolicy, Stage
from dr_train.pack import PackStats, Row, pack


@dataclass
class Item:
    """One record ready to tokenize: plain text, or a chat example."""

    id: str
    text: str | None = None
    example: Example | None = None


def _as_item(stage: Stage) -> Any:
    from dr_data.sft import to_example

    def adapt(obj: dict[str, Any]) -> Item | None:
        if stage == "midtrain" and "messages" not in obj:
            text = obj.get("text") or obj.get("article") or obj.get("content")
            if not isinstance(text, str) or not text.strip():
                raise ValueError("a mid-training document needs a non-empty 'text' (or chat 'messages')")
            return Item(id=str(obj.get("id") or hashlib.sha256(text.encode()).hexdigest()[:16]), text=text)
        _, example = to_example(obj)
        if example is None:
            return None  # an unanswered trajectory: nothing to learn
        if stage == "sft" and not example.loss_indices():
            raise ValueError(f"example {example.id} has no assistant turn to learn from")
        return Item(id=example.id, example=example)

    return adapt


def read_items(
    sources: Sequence[str], stage: Stage, on_error: OnError = "fail", rejects: RejectWriter | None = None
) -> list[Item]:
    items = [
        item
        for item in read_records(sources, adapt=_as_item(stage), on_error=on_error, rejects=rejects)
        if item is not None
    ]
    if not items:
        raise InputError(
            f"no {'documents' if stage == 'midtrain' else 'examples'} to train on in {', '.join(sources)}"
        )
    return items


def item_texts(items: Iterable[Item], tokenizer_template: str) -> list[str]:
    """The text a tokenizer is learnt from: documents and conversations as they will be rendered."""
    from jinja2 import Template

    template = Template(tokenizer_template)
    out = []
    for item in items:
        if item.text is not None:
            out.append(item.text)
        else:
            assert item.example is not None
            messages = [to_wire(m) for m in item.example.messages]
            out.append(
                template.render(messages=messages, tools=item.example.tools, add_generation_prompt=False)
            )
    return out


def tokenize(tokenizer: Any, item: Item, stage: Stage) -> Tokenized:
    if item.text is not None:
        ids = tokenizer(item.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return Tokenized(item.id, ids, list(ids))
    assert item.example is not None
    if stage == "sft":
        return tokenize_example(tokenizer, item.example)
    if getattr(tokenizer, "chat_template", None) is None:
        raise InputError("the tokenizer has no chat template; conversations cannot be rendered")
    messages = [to_wire(m) for m in item.example.messages]
    text = tokenizer.apply_chat_template(messages, tools=item.example.tools or None, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return Tokenized(item.id, ids, list(ids))


@dataclass
class Dataset:
    """Packed rows, and what packing did."""

    rows: list[Row]
    stats: PackStats = field(default_factory=PackStats)
    label_tokens: int = 0

    @property
    def tokens(self) -> int:
        return sum(len(r) for r in self.rows)

    def fingerprint(self) -> str:
        """Identifies the data order of a run, so a resume refuses different data."""
        digest = hashlib.sha256()
        for row in self.rows:
            digest.update(bytes(str(row.input_ids), "ascii"))
            digest.update(bytes(str(row.labels), "ascii"))
        return digest.hexdigest()[:16]


def build_dataset(
    items: Sequence[Item], tokenizer: Any, stage: Stage, budget: int, policy: LongPolicy
) -> Dataset:
    if policy == "split" and stage == "sft":
        raise InputError(
            "--long split cuts documents for mid-training; for SFT choose drop, truncate or error"
        )
    tokenized = []
    for item in items:
        doc = tokenize(tokenizer, item, stage)
        if policy == "error" and len(doc.input_ids) > budget:
            raise InputError(
                f"{doc.id}: {len(doc.input_ids)} tokens, over the {budget}-token row budget (--max-len); "
                "raise --max-len or choose --long drop|truncate" + ("|split" if stage == "midtrain" else "")
            )
        tokenized.append(doc)
    stats = PackStats()
    rows = [
        row
        for row in pack(tokenized, budget, "drop" if policy == "error" else policy, stats)
        if any(label != IGNORE for label in row.labels)
    ]
    if stats.dropped or stats.truncated or stats.split:
        logger.warning(
            "%d of %d records longer than %d tokens: %d dropped, %d truncated, %d split",
            stats.dropped + stats.truncated + stats.split,
            stats.documents,
            budget,
            stats.dropped,
            stats.truncated,
            stats.split,
        )
    if not rows:
        raise InputError(
            f"nothing left to train on: every record is longer than the {budget}-token budget or has no "
            "tokens to learn; raise --max-len"
        )
    labels = sum(sum(1 for label in row.labels if label != IGNORE) for row in rows)
    return Dataset(rows, stats, labels)
