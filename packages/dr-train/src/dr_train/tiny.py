"""Tiny models for tests and demos: a random Qwen2 with a byte-level BPE tokenizer trained on the fly.

No weights are downloaded: the tokenizer learns its vocabulary from the texts it is given, and the model
is initialized at random from a small config.
"""

from __future__ import annotations

from pathlib import Path

# ChatML with Hermes-style tool calls, as Qwen2.5 writes them.
CHAT_TEMPLATE = """\
{%- set system = messages[0].content if messages and messages[0].role == 'system' else '' %}
{%- if tools %}<|im_start|>system
{{ system }}

# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
Call a function by writing <tool_call>{"name": ..., "arguments": {...}}</tool_call>.<|im_end|>
{% elif system %}<|im_start|>system
{{ system }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}
{%- elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{% if message.content %}{{ message.content }}{% endif %}
{%- for call in message.tool_calls or [] %}
<tool_call>
{%- set args = call.function.arguments %}
{"name": "{{ call.function.name }}", "arguments": {{ args if args is string else args | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# How `transformers serve` reads a reply: the text up to <|im_end|>, as it was written. Without it the
# server falls back to Qwen2's template, whose tool-call parser fails the whole request (HTTP 500) when a
# small model writes a malformed <tool_call>; with it the agent's own parser reads the calls and sends a
# malformed one back to the model as an error it can correct.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {"content": {"close_pattern": r"\s*(?:<\|im_end\|>|<\|endoftext\|>)", "content": "text"}},
}


def train_tokenizer(texts: list[str], vocab_size: int = 400):
    """A byte-level BPE learnt from `texts`, as the Qwen2 tokenizer class that loads it again.

    transformers loads the tokenizer of any qwen2-type checkpoint as `Qwen2Tokenizer`, which keeps the
    vocabulary and merges but applies Qwen2's own normalizer and pre-tokenizer; the tokenizer returned here
    is that same class, so a run that learns its tokenizer encodes exactly as every later load (training,
    serving) does.

    The merges are learnt with a space before a capital or a digit kept apart, so no merge joins such a
    space, nor any punctuation, to a word. A name is then spelt with the same tokens wherever it stands
    (after a space in a question or an article, after a quote in a tool call's JSON), and a small model
    copies a name it has never seen token for token; with merges like "ĠP" its first piece would differ
    by position and the copy go wrong.
    """
    import json

    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r" (?=[A-Z0-9])"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    learner.train_from_iterator(texts, trainer)
    bpe = json.loads(learner.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe["vocab"],
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL], special_tokens=True
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.response_template = RESPONSE_TEMPLATE
    return tokenizer


def tiny_qwen2(directory: Path, texts: list[str] | None = None, seed: int = 0, hidden_size: int = 64) -> Path:
    """Save a random 2-layer Qwen2 (hidden 64) and its tokenizer in `directory`."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    texts = (
        texts
        or [
            "search the index for the founder of the city and open the best result",
            '<tool_call>{"name": "search", "arguments": {"queries": ["who founded it"]}}</tool_call>',
            "The answer is 42 because the report says so \\cite{doc-1}.",
        ]
        * 20
    )
    tokenizer = train_tokenizer(texts)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, max_new_tokens=32
    )
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
