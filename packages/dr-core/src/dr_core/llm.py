"""The one client for OpenAI-compatible chat endpoints (vLLM, transformers serve, hosted APIs).

Chat completions with tools and streaming; retries with exponential backoff and jitter on 429/5xx and
transport errors (honouring Retry-After); bounded concurrency shared by all threads using the client; an
on-disk cache keyed by the full request; token and cost accounting.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import orjson
from pydantic import BaseModel, Field

from dr_core.config import origin, resolve
from dr_core.errors import DeadlineExceeded, LLMError, ReplyCutOff
from dr_core.log import logger, strip_userinfo
from dr_core.records import Message, ToolCall, Usage

T = TypeVar("T")

# Statuses worth another try: rate limits, server overload and gateway errors.
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
# How much of an upstream error's reason an error message carries.
SUMMARY_CHARS = 200


class LLMConfig(BaseModel):
    """Where and how to reach an endpoint: section [llm] of the config file, DR_LLM_* variables, flags."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="Base URL, ending in /v1 for most servers.")
    model: str = "default"
    api_key: str | None = None
    timeout_s: float = Field(600.0, gt=0, description="Per-read timeout; long generations stream slowly.")
    connect_timeout_s: float = Field(10.0, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(1.0, ge=0, description="First retry delay; doubles each try, with jitter.")
    max_backoff_s: float = Field(60.0, ge=0)
    concurrency: int = Field(8, ge=1)
    cache_dir: Path | None = None
    price_input_per_mtok: float = Field(0.0, ge=0, description="USD per million prompt tokens.")
    price_output_per_mtok: float = Field(0.0, ge=0, description="USD per million completion tokens.")


def resolve_llm(section: str, flags: Mapping[str, Any] | None = None, at_once: int = 1) -> LLMConfig:
    """The [section] client settings under `flags`, for a command that makes `at_once` calls at a time
    (its --concurrency): the request cap (`concurrency`, 8 by default) rises to `at_once` unless the user
    set it; a cap set lower is kept, with a warning, since it may be a provider's rate limit."""
    config = resolve(LLMConfig, section, flags)
    if at_once > config.concurrency:
        where = origin(LLMConfig, section, "concurrency", flags)
        if where is None:
            return config.model_copy(update={"concurrency": at_once})
        logger.warning(
            "%d calls at once share %d model requests at a time (%s)", at_once, config.concurrency, where
        )
    return config


@dataclass
class ChatResult:
    """One completion: the assistant message, why it stopped, its usage, and whether it came from cache."""

    message: Message
    finish_reason: str | None
    usage: Usage
    cached: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


def to_wire(message: Message | Mapping[str, Any]) -> dict[str, Any]:
    """A message in the OpenAI request shape."""
    if not isinstance(message, Message):
        return dict(message)
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": call.raw_arguments
                    if call.raw_arguments is not None
                    else orjson.dumps(call.arguments).decode(),
                },
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        wire["name"] = message.name
    return wire


def parse_tool_call(raw: Mapping[str, Any], index: int) -> ToolCall:
    function = raw.get("function") or {}
    text = function.get("arguments")
    call_id = raw.get("id") or f"call_{index}"
    name = function.get("name") or ""
    if isinstance(text, dict):
        return ToolCall(id=call_id, name=name, arguments=text)
    try:
        arguments = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return ToolCall(id=call_id, name=name, raw_arguments=text)
    if not isinstance(arguments, dict):
        return ToolCall(id=call_id, name=name, raw_arguments=text)
    return ToolCall(id=call_id, name=name, arguments=arguments)


def from_wire(message: Mapping[str, Any]) -> Message:
    """An assistant message from a response, tool-call arguments parsed (kept raw when not JSON)."""
    calls = [parse_tool_call(raw, i) for i, raw in enumerate(message.get("tool_calls") or [])]
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return Message(role="assistant", content=message.get("content"), tool_calls=calls, reasoning=reasoning)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class ResponseCache:
    """Responses on disk, one JSON file per request, keyed by a hash of the full request."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(url: str, body: Mapping[str, Any]) -> str:
        return hashlib.sha256(
            orjson.dumps({"url": url, "body": body}, option=orjson.OPT_SORT_KEYS)
        ).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            data = orjson.loads(self._path(key).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def put(self, key: str, response: Mapping[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(orjson.dumps(response))
        os.replace(tmp, path)


def _assemble_stream(lines: Iterator[str], on_delta: Callable[[str], None] | None) -> dict[str, Any]:
    """Fold server-sent chat.completion.chunk events into one non-streaming response body."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish_reason = None
    usage: dict[str, Any] | None = None
    model = None
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise LLMError(f"stream sent an event that is not JSON: {data[:200]!r}") from None
        model = chunk.get("model", model)
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content.append(delta["content"])
                if on_delta is not None:
                    on_delta(delta["content"])
            if delta.get("reasoning_content"):
                reasoning.append(delta["reasoning_content"])
            for part in delta.get("tool_calls") or []:
                slot = calls.setdefault(
                    part.get("index", len(calls)), {"id": None, "name": "", "arguments": ""}
                )
                slot["id"] = part.get("id") or slot["id"]
                function = part.get("function") or {}
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) if content else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = [
            {
                "id": slot["id"],
                "type": "function",
                "function": {"name": slot["name"], "arguments": slot["arguments"]},
            }
            for _, slot in sorted(calls.items())
        ]
    body: dict[str, Any] = {"model": model, "choices": [{"message": message, "finish_reason": finish_reason}]}
    if usage is not None:
        body["usage"] = usage
    return body


class ChatModel(Protocol):
    """What the agent, the judge and the teachers call a model through: an OpenAI-compatible endpoint
    (`LLMClient`), the policy being trained (`dr_train.rl.policy.LocalPolicy`) or the world's oracle teacher
    (`dr_data.oracle.OracleTeacher`). `config` names the endpoint and model; `chat` returns one reply.
    Sampling settings (`max_tokens`, `temperature`, `top_p`, ...) are keywords; one that a model does not
    use is ignored."""

    config: LLMConfig

    def chat(
        self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None, **params: Any
    ) -> ChatResult: ...


class LLMClient:
    """A thread-safe client for one endpoint and model. Use one per endpoint and share it."""

    def __init__(self, config: LLMConfig | None = None) -> None:
        self.config = config or LLMConfig()
        self.where = strip_userinfo(self.config.base_url)  # the endpoint as messages and logs name it
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        self._http = httpx.Client(
            base_url=self.config.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(self.config.timeout_s, connect=self.config.connect_timeout_s),
            limits=httpx.Limits(max_connections=self.config.concurrency),
        )
        self._slots = threading.BoundedSemaphore(self.config.concurrency)
        self._lock = threading.Lock()
        self._usage = Usage()
        self._cache = ResponseCache(self.config.cache_dir) if self.config.cache_dir else None
        self._served_entry: dict[str, Any] | None = None
        self.takes_response_format = True  # until the server refuses it (chat_json)

    @classmethod
    def from_settings(cls, section: str = "llm", **flags: Any) -> LLMClient:
        """A client from flags (None: not given), DR_<SECTION>_* variables and the config's [section]."""
        return cls(resolve(LLMConfig, section, flags))

    # ---- accounting ----------------------------------------------------------------------------

    @property
    def usage(self) -> Usage:
        """Totals over every call this client made, cache hits counted apart."""
        with self._lock:
            return self._usage.model_copy()

    def _account(self, body: Mapping[str, Any], cached: bool) -> Usage:
        raw = body.get("usage") or {}
        prompt = int(raw.get("prompt_tokens") or 0)
        completion = int(raw.get("completion_tokens") or 0)
        cost = 0.0
        if not cached:
            cost = (
                prompt * self.config.price_input_per_mtok + completion * self.config.price_output_per_mtok
            ) / 1e6
        usage = Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            requests=0 if cached else 1,
            cached_requests=1 if cached else 0,
            cost_usd=cost,
        )
        with self._lock:
            if cached:
                self._usage = self._usage + Usage(cached_requests=1)
            else:
                self._usage = self._usage + usage
        return usage

    # ---- requests ------------------------------------------------------------------------------

    def chat(
        self,
        messages: Iterable[Message | Mapping[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        stream: bool = False,
        on_delta: Callable[[str], None] | None = None,
        timeout_s: float | None = None,
        **params: Any,
    ) -> ChatResult:
        """One chat completion. With stream=True, on_delta receives the content as it arrives.

        `timeout_s` bounds the whole call, retries and their waits included (an agent run's remaining
        time); past it, DeadlineExceeded. `params` pass through to the request body (temperature,
        max_tokens, tool_choice, seed, ...).
        """
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [to_wire(m) for m in messages],
            **params,
        }
        if tools:
            body["tools"] = tools
        if stream:
            body["stream"] = True
            body.setdefault("stream_options", {"include_usage": True})
        key = ResponseCache.key(self.config.base_url, body) if self._cache else None
        if self._cache is not None and key is not None:
            hit = self._cache.get(key)
            if hit is not None:
                result = self._result(hit, cached=True)
                if on_delta is not None and result.message.content:
                    on_delta(result.message.content)
                return result
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        response = self._post_with_retries(body, stream, on_delta, deadline)
        if self._cache is not None and key is not None:
            self._cache.put(key, response)
        return self._result(response, cached=False)

    def _result(self, body: Mapping[str, Any], cached: bool) -> ChatResult:
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise LLMError(f"{self.where}: response has no choices: {self._summary(str(body))}")
        choice = choices[0]
        return ChatResult(
            message=from_wire(choice.get("message") or {}),
            finish_reason=choice.get("finish_reason"),
            usage=self._account(body, cached),
            cached=cached,
            raw=dict(body),
        )

    def _post_with_retries(
        self,
        body: dict[str, Any],
        stream: bool,
        on_delta: Callable[[str], None] | None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        attempts = self.config.max_retries + 1
        delivered = False

        def tracking(text: str) -> None:
            nonlocal delivered
            delivered = True
            if on_delta is not None:
                on_delta(text)

        last = ""
        started = time.monotonic()

        def timeout() -> httpx.Timeout | None:
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(
                    f"{self.where}: no reply within {time.monotonic() - started:.1f}s, the time the run "
                    f"had left{f' (last error: {last})' if last else ''}"
                )
            return httpx.Timeout(
                min(self.config.timeout_s, left), connect=min(self.config.connect_timeout_s, left)
            )

        for attempt in range(attempts):
            wait: float | None = None
            try:
                timeout()  # raises once the deadline has passed
                # a slot is waited for only as long as the caller has (other calls may hold them all)
                if not self._slots.acquire(
                    timeout=None if deadline is None else max(0.0, deadline - time.monotonic())
                ):
                    raise DeadlineExceeded(
                        f"{self.where}: no request slot came free within the time the run had left"
                    )
                try:
                    return self._post(body, stream, tracking, timeout())
                finally:
                    self._slots.release()
            except _Retryable as exc:
                last, wait = str(exc), exc.retry_after
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                if deadline is not None and time.monotonic() >= deadline:
                    timeout()  # raises DeadlineExceeded
            if delivered:
                # Part of the answer already reached the caller; a retry would repeat it.
                raise LLMError(f"{self.where}: stream broke off mid-answer ({last})")
            if attempt + 1 == attempts:
                break
            delay = min(self.config.max_backoff_s, self.config.backoff_s * 2**attempt)
            delay = wait if wait is not None else delay * (0.5 + random.random() / 2)
            logger.debug("retrying %s in %.2fs after: %s", self.where, delay, last)
            delay = min(delay, self.config.max_backoff_s)
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - time.monotonic()))
            time.sleep(delay)
        raise LLMError(f"{self.where}: giving up after {attempts} attempts; last error: {last}")

    def _post(
        self,
        body: dict[str, Any],
        stream: bool,
        on_delta: Callable[[str], None],
        timeout: httpx.Timeout | None = None,
    ) -> dict[str, Any]:
        limit: Any = timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT
        if not stream:
            response = self._http.post("chat/completions", json=body, timeout=limit)
            self._raise_for_status(response)
            try:
                data = response.json()
            except ValueError:
                raise LLMError(
                    f"{self.where}: response is not JSON: {self._summary(response.text)!r}"
                ) from None
            if not isinstance(data, dict):
                raise LLMError(f"{self.where}: response is not a JSON object")
            return data
        with self._http.stream("POST", "chat/completions", json=body, timeout=limit) as response:
            if response.status_code >= 400:
                response.read()
            self._raise_for_status(response)
            return _assemble_stream(response.iter_lines(), on_delta)

    def _raise_for_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        # An error body may hold a traceback, a DSN or the key echoed back ("Incorrect API key provided:
        # sk-..."): what goes on is the status and a short, scrubbed reason; the body goes to the debug log.
        text = self._summary(_error_reason(response.text))
        logger.debug("%s answered HTTP %d: %s", self.where, status, self._summary(response.text, 2000))
        if status in RETRY_STATUSES or status >= 500:
            raise _Retryable(f"HTTP {status}: {text}", _retry_after(response))
        hint = " (check --api-key / DR_LLM_API_KEY)" if status in (401, 403) else ""
        raise LLMError(f"{self.where}: HTTP {status}{hint}: {text}", status=status)

    def _summary(self, text: str, limit: int = SUMMARY_CHARS) -> str:
        """`text` scrubbed of secrets, on one line, at most `limit` characters."""
        from dr_core.log import scrub

        flat = " ".join(scrub(text, [self.config.api_key]).split())
        return flat if len(flat) <= limit else flat[: limit - 3] + "..."

    def refuses_response_format(self, why: str) -> None:
        """Remember that this endpoint refuses `response_format`; said once on stderr."""
        with self._lock:
            first, self.takes_response_format = self.takes_response_format, False
        if first:
            logger.warning(
                "%s refuses response_format (%s); its replies are checked and sent back instead",
                self.where,
                why[-200:],
            )

    def served_model(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The endpoint's `/v1/models` entry for this model (the first entry when none has its id; {} where
        the server does not say within `timeout_s`). vLLM's gives `max_model_len` and `root`, the folder
        it loaded. Asked once per client."""
        with self._lock:
            if self._served_entry is None:
                self._served_entry = {}
                try:
                    response = self._http.get("models", timeout=httpx.Timeout(max(0.01, timeout_s)))
                    entries = response.json().get("data") if response.status_code == 200 else None
                except (httpx.HTTPError, ValueError, AttributeError):
                    entries = None
                if isinstance(entries, list):
                    listed = [e for e in entries if isinstance(e, dict)]
                    mine = [e for e in listed if e.get("id") == self.config.model]
                    self._served_entry = (mine or listed[:1] or [{}])[0]
            return self._served_entry

    def served_context(self, timeout_s: float = 10.0) -> int | None:
        """The context length the endpoint serves this model with, as vLLM's `/v1/models` gives it
        (`max_model_len`); None where the server does not say."""
        length = self.served_model(timeout_s).get("max_model_len")
        return length if isinstance(length, int) and not isinstance(length, bool) and length > 0 else None

    def chat_many(self, requests: Iterable[Mapping[str, Any]]) -> Iterator[ChatResult]:
        """Run `chat(**request)` for each request, `concurrency` at a time; results come in input order."""
        from dr_core.concurrency import ordered_map

        yield from ordered_map(lambda request: self.chat(**request), requests, self.config.concurrency)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def json_reply(content: str | None) -> dict[str, Any]:
    """The one JSON object in a model's reply, code fences and surrounding prose allowed; ValueError else."""
    if not content:
        raise ValueError("the reply is empty")
    text = re.sub(r"```(?:json)?", "", content)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("the reply has no JSON object")
    try:
        obj = orjson.loads(text[start : end + 1])
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the JSON does not parse: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("the reply is not a JSON object")
    return obj


# How servers refuse a response_format they do not support (vLLM without a guided-decoding backend,
# servers that predate structured outputs): the reply's schema is then left out, and the send-back loop
# alone keeps replies usable.
FORMAT_REFUSALS = ("response_format", "json_schema", "guided", "structured output")


def json_schema_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The `response_format` that asks an OpenAI-compatible server to constrain a reply to `schema`."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def chat_json(
    client: LLMClient,
    messages: list[Message],
    validate: Callable[[str | None], T],
    *,
    retries: int = 2,
    schema: tuple[str, dict[str, Any]] | None = None,
    **params: Any,
) -> T:
    """Ask for structured output; a reply `validate` rejects (ValueError) is sent back with the reason, up to
    `retries` times; then LLMError. `validate` turns the reply text into the caller's value.

    With `schema` (a name and a JSON schema) the request carries it as `response_format`, so a server
    that enforces it (vLLM's guided decoding, OpenAI's structured outputs) can only reply in that shape.
    A server that refuses the field is remembered for the client, said once on stderr, and asked without
    it; `validate` and the send-backs hold either way."""
    from dr_core.log import logger

    conversation = list(messages)
    problem = ""
    for attempt in range(retries + 1):
        request = dict(params)
        if schema is not None and client.takes_response_format:
            request["response_format"] = json_schema_format(*schema)
        try:
            result = client.chat(conversation, **request)
        except LLMError as exc:
            text = str(exc).lower()
            if "response_format" not in request or exc.status != 400:
                raise
            if not any(marker in text for marker in FORMAT_REFUSALS):
                raise
            client.refuses_response_format(str(exc))
            result = client.chat(conversation, **params)
        reply = result.message
        try:
            return validate(reply.content)
        except ValueError as exc:
            problem = str(exc)
            if result.finish_reason == "length":
                limit = params.get("max_tokens")
                raise ReplyCutOff(
                    f"{client.config.model}: the reply stopped at the token limit"
                    f"{f' (max_tokens {limit})' if limit else ''} before it was usable: {problem}"
                ) from None
            if attempt < retries:
                logger.info(
                    "%s: reply not usable (%s); sent back for correction (%d of %d)",
                    client.config.model,
                    problem,
                    attempt + 1,
                    retries,
                )
            conversation += [
                Message(role="assistant", content=reply.content or ""),
                Message(
                    role="user", content=f"Your reply could not be used: {problem}. Reply again, JSON only."
                ),
            ]
    raise LLMError(
        f"{strip_userinfo(client.config.base_url)}: no usable reply after {retries + 1} tries: {problem}"
    )


def _error_reason(body: str) -> str:
    """The reason an OpenAI-compatible error body gives (`error.message`, `message` or `detail`), else the
    body's first line."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        error = obj.get("error")
        for candidate in (
            error.get("message") if isinstance(error, dict) else error,
            obj.get("message"),
            obj.get("detail"),
        ):
            if isinstance(candidate, str) and candidate.strip():
                return candidate.strip().splitlines()[0]
    lines = [line for line in body.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no reason given)"


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
