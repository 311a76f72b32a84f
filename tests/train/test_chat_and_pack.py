"""Assistant-only labels, exactly; a packed row trains exactly as its documents one by one."""

from __future__ import annotations

import json
import re

import pytest
import torch

from dr_core.errors import InputError
from dr_core.records import Example, Message, ToolCall
from dr_train.chat import IGNORE, Tokenized, tokenize_example
from dr_train.pack import PackStats, document_mask, pack
from support.tiny_model import tiny_qwen2

TOOLS = [
    {"type": "function", "function": {"name": "search", "description": "s", "parameters": {"type": "object"}}}
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_qwen2(tmp_path_factory.mktemp("tiny") / "m")
    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)


def example() -> Example:
    call = ToolCall(id="c1", name="search", arguments={"queries": ["velmora founder"]})
    return Example(
        id="e1",
        tools=TOOLS,
        messages=[
            Message(role="system", content="You research."),
            Message(role="user", content="Who founded Velmora?"),
            Message(role="assistant", content="Let me search.", tool_calls=[call]),
            Message(role="tool", tool_call_id="c1", content="Velmora was founded by Ada Quist."),
            Message(role="assistant", content="Answer: Ada Quist"),
        ],
    )


def test_only_assistant_turns_and_their_end_tokens_carry_loss(tiny):
    tokenizer, _ = tiny
    tokenized = tokenize_example(tokenizer, example())
    learned = tokenizer.decode(
        [t for t, label in zip(tokenized.input_ids, tokenized.labels, strict=True) if label != IGNORE]
    )
    rendered = tokenizer.apply_chat_template(
        [
            m.model_dump()
            | {
                "tool_calls": [
                    {
                        "type": "function",
                        "id": c.id,
                        "function": {
                            "name": c.name,
                            "arguments": json.dumps(c.arguments, separators=(",", ":")),
                        },
                    }
                    for c in m.tool_calls
                ]
            }
            for m in example().messages
        ],
        tools=TOOLS,
        tokenize=False,
    )
    # every assistant turn's text and its end token, and nothing else
    expected = "".join(re.findall(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", rendered, re.DOTALL))
    assert (
        "Let me search." in expected
        and "velmora founder" in expected
        and expected.endswith("Answer: Ada Quist<|im_end|>")
    )
    assert learned == expected
    masked = tokenizer.decode(
        [t for t, label in zip(tokenized.input_ids, tokenized.labels, strict=True) if label == IGNORE]
    )
    assert (
        "Who founded Velmora?" in masked
        and "Velmora was founded by Ada Quist." in masked
        and "You research." in masked
    )
    assert "<|im_start|>assistant\n" in masked  # the header is given, not learnt


def test_loss_turns_choose_which_assistant_turns_are_learnt(tiny):
    tokenizer, _ = tiny
    only_last = example().model_copy(update={"loss_turns": [4]})
    tokenized = tokenize_example(tokenizer, only_last)
    learned = tokenizer.decode(
        [t for t, label in zip(tokenized.input_ids, tokenized.labels, strict=True) if label != IGNORE]
    )
    assert learned == "Answer: Ada Quist<|im_end|>"


def test_an_example_without_assistant_turns_is_refused(tiny):
    tokenizer, _ = tiny
    with pytest.raises(InputError, match="no assistant turn to learn from"):
        tokenize_example(tokenizer, Example(id="x", messages=[Message(role="user", content="hi")]))


def doc(name: str, n: int, offset: int = 5) -> Tokenized:
    ids = [offset + (i * 7 + len(name)) % 300 for i in range(n)]
    return Tokenized(name, ids, list(ids))


def test_packing_fills_rows_restarts_positions_and_applies_the_policy():
    stats = PackStats()
    rows = list(
        pack([doc("a", 5), doc("b", 4), doc("c", 3), doc("long", 12)], budget=10, policy="split", stats=stats)
    )
    assert [r.sources for r in rows] == [["a", "b"], ["c"], ["long#0"], ["long#1"]]
    assert rows[0].position_ids == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert rows[0].doc_ids == [0] * 5 + [1] * 4
    assert rows[0].labels[0] == IGNORE and rows[0].labels[5] == IGNORE  # no loss on a document's first token
    assert (stats.documents, stats.rows, stats.split) == (4, 4, 1)
    dropped = PackStats()
    assert [r.sources for r in pack([doc("long", 12), doc("a", 5)], 10, "drop", dropped)] == [["a"]]
    assert dropped.dropped == 1
    truncated = list(pack([doc("long", 12)], 10, "truncate"))
    assert len(truncated[0]) == 10


def test_a_packed_row_gives_the_same_loss_and_gradients_as_its_documents_one_by_one(tiny):
    _, model = tiny
    model = model.float()
    docs = [doc("a", 7), doc("b", 5, offset=50), doc("c", 9, offset=90)]
    [row] = list(pack(docs, budget=32))

    def loss_of(ids, labels, positions=None, mask=None):
        kwargs = {"input_ids": torch.tensor([ids])}
        if positions is not None:
            kwargs["position_ids"] = torch.tensor([positions])
            kwargs["attention_mask"] = mask
        logits = model(**kwargs).logits[0, :-1]
        return torch.nn.functional.cross_entropy(
            logits, torch.tensor(labels[1:]), ignore_index=IGNORE, reduction="sum"
        )

    model.zero_grad()
    packed = loss_of(row.input_ids, row.labels, row.position_ids, document_mask(row.doc_ids))
    packed.backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    separate = sum(loss_of(d.input_ids, [IGNORE, *d.labels[1:]]) for d in docs)
    separate.backward()
    assert packed.item() == pytest.approx(separate.item(), rel=1e-5)
    for a, b in zip(packed_grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)  # fp32: summation order differs only


def test_the_text_tool_convention_renders_to_the_same_tokens_as_the_tools_api(tiny):
    """A server without the tools API gets the conversation as text (dr_core.tool_text); the tiny models'
    template renders it to exactly the tokens it renders the conversation with `tools` to, so a model sees
    the same thing either way."""
    from dr_agent.tools import tool_schemas
    from dr_core.llm import to_wire
    from dr_core.tool_text import as_text_conversation

    tokenizer, _ = tiny
    tools = tool_schemas()
    calls = [
        ToolCall(id="a", name="search", arguments={"queries": ["Velmora", "Ada Quist"]}),
        ToolCall(id="b", name="plan", arguments={"action": "create", "items": ["find it"]}),
    ]
    messages = [
        Message(role="system", content="You research."),
        Message(role="user", content="Who founded Velmora?"),
        Message(role="assistant", content="Two things at once.", tool_calls=calls),
        Message(
            role="tool", tool_call_id="a", content="## Velmora\n[velmora] Velmora was founded by Ada Quist."
        ),
        Message(role="tool", tool_call_id="b", content="Plan:\n1. [ ] find it"),
        Message(
            role="assistant",
            content=None,
            tool_calls=[ToolCall(id="c", name="open", raw_arguments='{"ids": [velmora')],
        ),
        Message(role="tool", tool_call_id="c", content="not JSON"),
        Message(role="user", content="You did not call a tool."),
    ]
    api = tokenizer.apply_chat_template(
        [to_wire(m) for m in messages], tools=tools, tokenize=False, add_generation_prompt=True
    )
    text = as_text_conversation(messages, tools)
    assert {m.role for m in text} == {"system", "user", "assistant"} and not any(m.tool_calls for m in text)
    rendered = tokenizer.apply_chat_template(
        [to_wire(m) for m in text], tokenize=False, add_generation_prompt=True
    )
    assert rendered == api
    assert tokenizer(rendered)["input_ids"] == tokenizer(api)["input_ids"]
    # consecutive results share one user turn, as Qwen2.5's template writes them
    assert api.count("<|im_start|>user\n<tool_response>") == 2 and api.count("<tool_response>") == 3
