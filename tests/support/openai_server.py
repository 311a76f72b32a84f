"""A scripted OpenAI-compatible chat server on loopback, for testing clients and agent loops.

Each request to /v1/chat/completions is answered by the next `Reply` of the script (the last one repeats).
A reply can fail with a status, stall, stream its content in pieces, call tools, or break off mid-stream.
The server records every request body and header, and the most requests it held at once.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from support.loopback import loopback


@dataclass
class Reply:
    content: str | None = "ok"
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # [{"name":..., "arguments": str|dict}]
    status: int = 200
    error_body: str = '{"error": {"message": "scripted failure"}}'
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    prompt_tokens: int = 10
    completion_tokens: int = 5
    chunks: int = 3  # pieces the content is streamed in
    break_stream_after: int | None = None  # drop the connection after this many content chunks
    finish_reason: str | None = None  # given: the reply's finish_reason ("length": cut at max_tokens)


@dataclass
class ScriptedServer:
    script: list[Reply] | Callable[[dict[str, Any]], Reply]
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    max_in_flight: int = 0
    url: str = ""
    max_model_len: int | None = None  # given: GET /v1/models lists the model with it, as vLLM does
    root: str | None = None  # given: GET /v1/models names this folder as the model's root, as vLLM does
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            index = len(self.requests) - 1
        if callable(self.script):
            return self.script(body)
        return self.script[min(index, len(self.script) - 1)]

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


def _wire_calls(reply: Reply) -> list[dict[str, Any]]:
    calls = []
    for i, call in enumerate(reply.tool_calls):
        arguments = call["arguments"]
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(
            {
                "id": call.get("id", f"call_{i}"),
                "type": "function",
                "function": {"name": call["name"], "arguments": arguments},
            }
        )
    return calls


def _pieces(text: str, n: int) -> Iterator[str]:
    step = max(1, -(-len(text) // max(1, n)))
    for start in range(0, len(text), step):
        yield text[start : start + step]


def _handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/v1/models" or (
                server.max_model_len is None and server.root is None
            ):
                self._send(404, b'{"error": "not found"}')
                return
            entry: dict[str, Any] = {"id": "m", "object": "model"}
            if server.max_model_len is not None:
                entry["max_model_len"] = server.max_model_len
            if server.root is not None:
                entry["root"] = server.root
            self._send(200, json.dumps({"object": "list", "data": [entry]}).encode())

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, b'{"error": "not found"}')
                return
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            server.headers.append(dict(self.headers))
            server.enter()  # in flight from arrival: a script may hold the request
            try:
                reply = server.next_reply(body)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.status != 200:
                    self._send(reply.status, reply.error_body.encode(), reply.headers)
                elif body.get("stream"):
                    self._stream(body, reply)
                else:
                    self._send(200, json.dumps(self._completion(body, reply)).encode(), reply.headers)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                server.leave()

        def _completion(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
            message: dict[str, Any] = {"role": "assistant", "content": reply.content}
            if reply.tool_calls:
                message["tool_calls"] = _wire_calls(reply)
            return {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": reply.finish_reason
                        or ("tool_calls" if reply.tool_calls else "stop"),
                    }
                ],
                "usage": {
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                    "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                },
            }

        def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _event(self, payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            chunk = f"data: {data}\n\n".encode()
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()

        def _stream(self, body: dict[str, Any], reply: Reply) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": body.get("model")}
            for n, piece in enumerate(_pieces(reply.content or "", reply.chunks)):
                if reply.break_stream_after is not None and n >= reply.break_stream_after:
                    self.close_connection = True
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self._event(
                    {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                )
            for i, call in enumerate(_wire_calls(reply)):
                arguments = call["function"]["arguments"]
                half = len(arguments) // 2
                first = {
                    "index": i,
                    "id": call["id"],
                    "function": {"name": call["function"]["name"], "arguments": arguments[:half]},
                }
                second = {"index": i, "function": {"arguments": arguments[half:]}}
                for part in (first, second):
                    self._event(
                        {
                            **base,
                            "choices": [{"index": 0, "delta": {"tool_calls": [part]}, "finish_reason": None}],
                        }
                    )
            finish = "tool_calls" if reply.tool_calls else "stop"
            self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
                self._event({**base, "choices": [], "usage": usage})
            self._event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


@contextmanager
def scripted_server(
    script: list[Reply] | Callable[[dict[str, Any]], Reply],
    max_model_len: int | None = None,
    root: str | None = None,
) -> Iterator[ScriptedServer]:
    """Run a ScriptedServer on 127.0.0.1 (a free port) for the duration of the block."""
    state = ScriptedServer(script=script, max_model_len=max_model_len, root=root)
    with loopback(_handler(state)) as url:
        state.url = f"{url}/v1"
        yield state


class Rendezvous:
    """Holds the first `parties` requests until all of them have arrived (or `timeout_s` passes), so a test
    can see that a client really keeps that many requests in flight, however slow the machine."""

    def __init__(self, parties: int, timeout_s: float = 10.0) -> None:
        self.barrier = threading.Barrier(parties, timeout=timeout_s)
        self.parties = parties
        self.arrived = 0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            self.arrived += 1
            mine = self.arrived
        if mine <= self.parties:
            # fewer may come than expected: then the test's assertion on max_in_flight says so
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait()
