"""Tool calls as text, in the ChatML + Hermes convention Qwen2.5 uses: the tool schemas in the system
prompt inside <tools>, each call as a <tool_call> JSON block in the assistant's text, each result inside
<tool_response> in a user turn (consecutive results share one). dr's tiny models' chat template renders
tools this way, and the agent sends exactly this text to a server that has no tools API, so a model sees
the same tokens either way.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from dr_core.records import Message, ToolCall

TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)


# A chat template for ChatML models (<|im_start|> / <|im_end|>) that renders tools in this convention: the
# tool section of the system prompt, <tool_call> blocks, consecutive tool results in one user turn of
# <tool_response>s. dr's tiny models use it, and so does a model whose own template drops tool calls.
CHATML_TOOLS_TEMPLATE = (
    """\
{%- set system = messages[0].content if messages and messages[0].role == 'system' else '' %}
{%- if tools %}<|im_start|>system
{% if system %}{{ system }}

{% endif %}"""
    + TOOLS_INTRO
    + """
{%- for tool in tools %}{{ "\\n" }}{{ tool | tojson }}{%- endfor %}{{ "" }}"""  # keeps the newline after it
    + TOOLS_OUTRO
    + """<|im_end|>
{% elif system %}<|im_start|>system
{{ system }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}<|im_start|>user{% endif %}
{{- "\\n<tool_response>\\n" + (message.content or "") + "\\n</tool_response>" }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>{{ "\\n" }}{% endif %}
{%- elif message.role == 'assistant' %}<|im_start|>assistant{{ "\\n" }}
{{- message.content or "" }}
{%- for call in message.tool_calls or [] %}
{%- set args = call.function.arguments %}
{{- '\\n<tool_call>\\n{"name": "' + call.function.name + '", "arguments": ' }}
{{- args if args is string else args | tojson }}
{{- '}\\n</tool_call>' }}
{%- endfor %}<|im_end|>{{ "\\n" }}
{%- else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
)

# How `transformers serve` reads a reply: the text up to <|im_end|>, as it was written. Without it the
# server falls back to Qwen2's template, whose tool-call parser fails the whole request (HTTP 500) when a
# small model writes a malformed <tool_call>; with it the agent's own parser reads the calls and sends a
# malformed one back to the model as an error it can correct.
RAW_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {"content": {"close_pattern": r"\s*(?:<\|im_end\|>|<\|endoftext\|>)", "content": "text"}},
}


def tools_block(tools: list[dict[str, Any]]) -> str:
    """The system prompt's tool section; each schema as a chat template's `tojson` writes it."""
    return TOOLS_INTRO + "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools) + TOOLS_OUTRO


def as_text_conversation(messages: list[Message], tools: list[dict[str, Any]]) -> list[Message]:
    """The conversation with its tools as text only (no tool_calls, no tool role), for a server without
    the tools API: any chat template renders it, and the tiny models' own template renders it to the same
    text as the original conversation with `tools`."""
    out: list[Message] = []
    results_at: int | None = None  # the user turn that holds the current run of tool results
    for message in messages:
        if message.role == "tool":
            block = f"<tool_response>\n{message.content or ''}\n</tool_response>"
            if results_at is None:
                results_at = len(out)
                out.append(Message(role="user", content=block))
            else:
                out[results_at] = Message(role="user", content=f"{out[results_at].content}\n{block}")
            continue
        results_at = None
        if message.role == "system":
            system = f"{message.content}\n\n" if message.content else ""
            out.append(Message(role="system", content=system + tools_block(tools)))
        elif message.role == "assistant" and message.tool_calls:
            blocks = "".join(
                f'\n<tool_call>\n{{"name": "{call.name}", "arguments": {_arguments(call)}}}\n</tool_call>'
                for call in message.tool_calls
            )
            out.append(Message(role="assistant", content=(message.content or "") + blocks))
        else:
            out.append(message)
    if not any(m.role == "system" for m in out):
        out.insert(0, Message(role="system", content=tools_block(tools)))
    return out


def _arguments(call: ToolCall) -> str:
    """A call's arguments as they travel in a request (dr_core.llm.to_wire): the text the model wrote
    when it was not JSON, else compact JSON."""
    return call.raw_arguments if call.raw_arguments is not None else orjson.dumps(call.arguments).decode()


# A conversation whose every part must show in a template's rendering for the template to keep tool calls.
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "probe_tool_x7",
        "description": "probe-description-557",
        "parameters": {"type": "object", "properties": {"probe_arg": {"type": "string"}}},
    },
}
_PROBE = [
    {"role": "system", "content": "probe-system-211"},
    {"role": "user", "content": "probe-user-377"},
    {
        "role": "assistant",
        "content": "probe-thought-419",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "probe_tool_x7", "arguments": '{"probe_arg": "probe-value-731"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "probe-result-913"},
]


def template_drops(tokenizer: Any) -> list[str]:
    """What a tokenizer's chat template loses of a conversation with tools: 'tools', 'tool calls' (the
    call or its arguments), 'tool results', 'text beside a tool call'; [] when it keeps all of it."""
    try:
        text = tokenizer.apply_chat_template(_PROBE, tools=[_PROBE_TOOL], tokenize=False)
    except Exception:  # a template that fails on tool calls keeps none of them
        return ["tools", "tool calls", "tool results"]
    lost = []
    if "probe-description-557" not in text:
        lost.append("tools")
    if "probe_tool_x7" not in text or "probe-value-731" not in text:
        lost.append("tool calls")
    if "probe-result-913" not in text:
        lost.append("tool results")
    if "probe-thought-419" not in text:
        lost.append("text beside a tool call")
    return lost


def keep_tool_calls(tokenizer: Any) -> bool:
    """Give a ChatML tokenizer whose own template drops tools, tool calls or tool results the template of
    this convention (CHATML_TOOLS_TEMPLATE), and the raw reply reading for `transformers serve`; True when
    it was replaced. A tokenizer that is not ChatML keeps its template (training then refuses examples
    whose tool calls it drops)."""
    if not template_drops(tokenizer):
        return False
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" not in vocab or "<|im_end|>" not in vocab:
        return False
    tokenizer.chat_template = CHATML_TOOLS_TEMPLATE
    tokenizer.response_template = RAW_RESPONSE_TEMPLATE
    return True
