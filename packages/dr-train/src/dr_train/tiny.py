"""Tiny models for tests and demos: a random Qwen2 with a byte-level BPE tokenizer trained on the fly.

No weights are downloaded: the tokenizer learns its vocabulary from the texts it is given, and the model
is initialized at random from a small config.
"""

from __future__ import annotations

from pathlib import Path

from dr_core.tool_text import CHATML_TOOLS_TEMPLATE, RAW_RESPONSE_TEMPLATE

# The chat template and the way `transformers serve` reads replies: ChatML with Hermes tool calls.
CHAT_TEMPLATE = CHATML_TOOLS_TEMPLATE
RESPONSE_TEMPLATE = RAW_RESPONSE_TEMPLATE

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


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
        merges=merges,  # type: ignore[arg-type]  # the stub says str | list[str]; pairs are what it takes
        unk_token=None,  # type: ignore[arg-type]  # a byte-level BPE has no unknown token
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL], special_tokens=True
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.response_template = RESPONSE_TEMPLATE
    return tokenizer


def tiny_qwen2(
    directory: Path, texts: list[str] | None = None, seed: int = 0, hidden_size: int = 64, layers: int = 2
) -> Path:
    """Save a random Qwen2 (2 layers of hidden 64 unless told) and its tokenizer in `directory`."""
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
        num_hidden_layers=layers,
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
