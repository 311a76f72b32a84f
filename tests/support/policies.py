"""Scripted research policies for the scripted OpenAI server: they read the conversation and act."""

from __future__ import annotations

import json
import re
from typing import Any

from support.openai_server import Reply


def tool_results(body: dict[str, Any]) -> list[str]:
    return [m.get("content") or "" for m in body["messages"] if m["role"] == "tool"]


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def researcher(query: str, answer_template: str = "The answer is in \\cite{{{id}}}.") -> Any:
    """plan -> search `query` -> open the first hit -> answer citing it."""

    def policy(body: dict[str, Any]) -> Reply:
        results = tool_results(body)
        if not results:
            return Reply(
                content="Let me plan.", tool_calls=[call("plan", action="create", items=["find it"])]
            )
        if len(results) == 1:
            return Reply(content=None, tool_calls=[call("search", queries=[query])])
        if len(results) == 2:
            first = re.search(r"^\[([^\]]+)\]", results[-1].split("\n", 1)[1], re.MULTILINE)
            assert first is not None, results[-1]
            return Reply(content="Opening the best hit.", tool_calls=[call("open", ids=[first.group(1)])])
        opened = re.search(r"^# \[([^\]]+)\]", results[-1], re.MULTILINE)
        assert opened is not None, results[-1]
        return Reply(
            content=None, tool_calls=[call("answer", text=answer_template.format(id=opened.group(1)))]
        )

    return policy


def as_text_calls(reply: Reply) -> Reply:
    """The same reply, but with tool calls written as <tool_call> text the server does not parse."""
    blocks = "".join(f"<tool_call>{json.dumps(c)}</tool_call>" for c in reply.tool_calls)
    return Reply(content=(reply.content or "") + blocks, tool_calls=[])


VLLM_NO_TOOLS = (
    '{"object": "error", "message": "\\"auto\\" tool choice requires --enable-auto-tool-choice and '
    '--tool-call-parser to be set", "type": "BadRequestError", "param": null, "code": 400}'
)


def text_only(policy: Any) -> Any:
    """A server as `vllm serve` runs by default: a request with `tools` gets its HTTP 400; otherwise
    `policy` acts on the conversation, reading tool results from <tool_response> user turns, and answers
    with <tool_call> text."""

    def server(body: dict[str, Any]) -> Reply:
        if body.get("tools"):
            return Reply(status=400, error_body=VLLM_NO_TOOLS)
        messages = []
        for m in body["messages"]:
            content = m.get("content") or ""
            if m["role"] == "user" and content.startswith("<tool_response>"):
                for inner in re.findall(r"<tool_response>\n(.*?)\n</tool_response>", content, re.DOTALL):
                    messages.append({"role": "tool", "content": inner})
            else:
                messages.append(m)
        return as_text_calls(policy({**body, "messages": messages}))

    return server
