"""Chat examples to token ids with loss only on the assistant turns that carry it, exactly.

The example is rendered with the tokenizer's own chat template. Each loss turn's characters are found by
rendering the conversation up to it (with the assistant header) and through it; tokens whose text starts
inside such a span are labelled, everything else (system, user, tool results, headers) is masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

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
    lost = _dropped(example, text)
    if lost:
        name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        raise InputError(
            f"example {example.id}: the chat template of {name} drops {lost}, so the model would learn a "
            "conversation without it; give a tokenizer whose template renders tools, tool calls and tool "
            "results (dr converts a ChatML model's template to one: dr_core.tool_text.keep_tool_calls)"
        )
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


def _dropped(example: Example, text: str) -> str | None:
    """The first tool call, argument or tool result of `example` that its rendering `text` lacks."""
    for message in example.messages:
        if message.role == "tool" and message.content and message.content.strip()[:64] not in text:
            return f"the tool result {message.content.strip()[:40]!r}"
        for call in message.tool_calls:
            if call.name not in text:
                return f"the tool call {call.name!r}"
            for value in _strings(call.arguments):
                # as a template writes it: inside the arguments' JSON (escaped), or as plain text
                escaped = orjson.dumps(value).decode()[1:65]
                if escaped not in text and value[:64] not in text:
                    return f"the argument {value.strip()[:40]!r} of a {call.name!r} call"
    return None


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
