"""Chat examples to token ids with loss only on the assistant turns that carry it, exactly.

The example is rendered with the tokenizer's own chat template. Each loss turn's characters are found by
rendering the conversation up to it (with the assistant header) and through it; tokens whose text starts
inside such a span are labelled, everything else (system, user, tool results, headers) is masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dr_core.errors import InputError
from dr_core.llm import to_wire
from dr_core.records import Example

IGNORE = -100  # the label PyTorch's cross-entropy skips


@dataclass
class Tokenized:
    id: str
    input_ids: list[int]
    labels: list[int]


def _render(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]], generation: bool
) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools or None, tokenize=False, add_generation_prompt=generation
    )


def tokenize_example(tokenizer: Any, example: Example) -> Tokenized:
    """input_ids and labels (IGNORE outside the loss turns) of one example."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise InputError("the tokenizer has no chat template; SFT needs one to render conversations")
    losses = example.loss_indices()
    if not losses:
        raise InputError(f"example {example.id}: no assistant turn to learn from")
    wire = [to_wire(m) for m in example.messages]
    text = _render(tokenizer, wire, example.tools, generation=False)
    spans = []
    for index in losses:
        before = _render(tokenizer, wire[:index], example.tools, generation=True) if index else ""
        through = _render(tokenizer, wire[: index + 1], example.tools, generation=False)
        if not (text.startswith(through) and through.startswith(before)):
            raise InputError(
                f"example {example.id}: the chat template does not render conversations prefix by prefix, "
                "so assistant turns cannot be located"
            )
        end = len(through.rstrip())  # the end-of-turn token is learnt; the newline after it is not
        spans.append((len(before), end))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token, (start, _) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        inside = any(a <= start < b for a, b in spans)
        labels.append(token if inside else IGNORE)
    return Tokenized(example.id, list(encoded["input_ids"]), labels)
