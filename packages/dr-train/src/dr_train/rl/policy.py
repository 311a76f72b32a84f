"""The model being trained, standing where the agent's LLM client stands.

`LocalPolicy.chat()` renders the conversation with the model's chat template, samples a reply with
`generate` on the same Hugging Face model the update step trains, and returns it as the agent expects (tool
calls stay in the text; the agent's `<tool_call>` parser reads them). Every turn's exact prompt and sampled
token ids are recorded under the rollout's key, so RL trains on the tokens the policy really produced,
never on a re-tokenization of them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from dr_core.llm import ChatResult, LLMConfig, to_wire
from dr_core.records import Message, Usage


@dataclass
class Turn:
    prompt: list[int]
    response: list[int]
    # the engine's log-probability of each sampled token (vLLM rollouts; None from generate here)
    logprobs: list[float] | None = None
    # the policy version (updates applied) that sampled each token (vLLM rollouts; None from generate here)
    versions: list[int] | None = None


@dataclass
class Recording:
    turns: list[Turn] = field(default_factory=list)


_current = threading.local()


def render(tokenizer: Any, messages: list[Message], tools: list[dict[str, Any]] | None) -> list[int]:
    """The prompt token ids of a conversation, as the trainer's chat template renders it."""
    wire = [to_wire(m) for m in messages]
    prompt = tokenizer.apply_chat_template(
        wire, tools=tools or None, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    if hasattr(prompt, "input_ids"):
        prompt = prompt["input_ids"]
    return list(prompt)


def new_tokens(prompt: list[int], max_context: int, max_tokens: int | None) -> int:
    """How many tokens a reply to `prompt` may take: the asked-for count (1024 when none), at least 1,
    within what the context has left; 0 or less when the prompt already fills it (see no_room)."""
    room = max_context - len(prompt)
    return room if room <= 0 else max(1, min(max_tokens or 1024, room))


def no_room(prompt: list[int]) -> ChatResult:
    """The reply to a prompt that already fills the context: nothing, cut for length."""
    return ChatResult(
        message=Message(role="assistant", content=""),
        finish_reason="length",
        usage=Usage(prompt_tokens=len(prompt)),
    )


def current_recording() -> Recording | None:
    """The recording this thread's chat() calls go into, if any."""
    return getattr(_current, "recording", None)


class record_turns:
    """Within this block, this thread's chat() calls are recorded into `recording`."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording

    def __enter__(self) -> Recording:
        _current.recording = self.recording
        return self.recording

    def __exit__(self, *exc: object) -> None:
        _current.recording = None


class LocalPolicy:
    """chat() with an in-process model; safe for concurrent rollouts (generation only reads weights)."""

    def __init__(
        self, model: Any, tokenizer: Any, name: str = "policy", max_context: int | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = LLMConfig(model=name, base_url="local://policy")
        self.max_context: int = max_context or int(getattr(model.config, "max_position_embeddings", 32768))

    def chat(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        **_: Any,
    ) -> ChatResult:
        import torch

        prompt = render(self.tokenizer, messages, tools)
        budget = new_tokens(prompt, self.max_context, max_tokens)
        if budget <= 0:
            return no_room(prompt)
        sample = temperature > 0
        device = next(self.model.parameters()).device
        with torch.no_grad():
            output = self.model.generate(
                input_ids=torch.tensor([prompt], device=device),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
                max_new_tokens=budget,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=top_p if sample else None,
                top_k=None,
                use_cache=True,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        response = output[0, len(prompt) :].tolist()
        finished = bool(response) and response[-1] == self.tokenizer.eos_token_id
        recording = current_recording()
        if recording is not None:
            recording.turns.append(Turn(prompt, response))
        text = self.tokenizer.decode(response, skip_special_tokens=True)
        return ChatResult(
            message=Message(role="assistant", content=text),
            finish_reason="stop" if finished else "length",
            usage=Usage(prompt_tokens=len(prompt), completion_tokens=len(response)),
        )
