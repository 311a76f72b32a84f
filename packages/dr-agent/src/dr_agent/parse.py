"""Fallback for models that write tool calls as text, for servers that do not parse tool calls themselves:
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, the Hermes/Qwen convention.
"""

from __future__ import annotations

import re

import orjson

from dr_core.records import ToolCall

BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_text_tool_calls(content: str | None, first_index: int = 0) -> tuple[list[ToolCall], str, list[str]]:
    """(tool calls, the content without the call blocks, errors for blocks that could not be read)."""
    if not content or "<tool_call>" not in content:
        return [], content or "", []
    calls: list[ToolCall] = []
    errors: list[str] = []
    for n, match in enumerate(BLOCK.finditer(content)):
        body = match.group(1)
        if not match.group(0).rstrip().endswith("</tool_call>"):
            errors.append(f"tool call {n + 1} is not closed with </tool_call>")
            continue
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            errors.append(f"tool call {n + 1} is not valid JSON ({exc}): {body[:200]!r}")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            errors.append(f'tool call {n + 1} needs the form {{"name": ..., "arguments": {{...}}}}')
            continue
        arguments = obj.get("arguments", {})
        call_id = f"call_{first_index + len(calls)}"
        if isinstance(arguments, str):
            try:
                arguments = orjson.loads(arguments)
            except orjson.JSONDecodeError:
                calls.append(ToolCall(id=call_id, name=obj["name"], raw_arguments=arguments))
                continue
        if not isinstance(arguments, dict):
            calls.append(
                ToolCall(id=call_id, name=obj["name"], raw_arguments=orjson.dumps(arguments).decode())
            )
            continue
        calls.append(ToolCall(id=call_id, name=obj["name"], arguments=arguments))
    remaining = BLOCK.sub("", content).strip()
    return calls, remaining, errors
