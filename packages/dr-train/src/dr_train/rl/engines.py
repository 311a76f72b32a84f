"""RL rollouts through vLLM: the policy samples in one or more vLLM servers, and each update is pushed into
every one of them before the next rollouts.

`EnginePolicy.chat()` renders the conversation with the trainer's own tokenizer and chat template, sends
the prompt as token ids to `/v1/completions`, and records the prompt, the sampled token ids and vLLM's
log-probabilities of them, so the update trains on exactly what was sampled and can measure how far the
engine's numbers are from the trainer's.

Weight sync (`VLLMServers.sync`): vLLM's transfer engines (NCCL, CUDA IPC) need GPUs, so dr uses the path vLLM
offers on every build: the trainer writes the policy as a Hugging Face folder, and each engine reloads it in
place (`/collective_rpc` `reload_weights` with `weights_path`), drops its prefix cache (KV computed with
the old weights), and takes the new version name (`/update_weight_version`, read back from
`/weight_info`). A probe then checks the engine holds the trainer's weights: vLLM's prompt
log-probabilities of a fixed sequence against the trainer's own. Engines on other machines are URLs; the
folder must then be on a filesystem they share. The endpoints are vLLM's development API:
`VLLM_SERVER_DEV_MODE=1`, which the engine dr starts for itself sets.

Asynchronous RL (`--max-staleness` K > 0) samples while the trainer updates, so a sync meets requests in
flight. It first holds back new requests here, then pauses each engine with vLLM's pause API: `abort`
returns each request's tokens so far (finish reason "abort"), and `EnginePolicy` sends it again with those
tokens as the prompt's continuation once the engine holds the new weights; `wait` lets them finish on the
old weights first. Every sampled token records the version (updates applied) of the weights that sampled
it: requests are only sent between syncs, and a sync reloads nothing while one is still in flight, so the
version a request was sent under is the one that sampled its tokens.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx

from dr_core.errors import DrError
from dr_core.llm import ChatResult, LLMConfig
from dr_core.log import logger
from dr_core.records import Message, Usage
from dr_core.server import ManagedServer, ServerError, server_root
from dr_train.rl.policy import Turn, current_recording, new_tokens, no_room, render


class EngineError(DrError):
    """A rollout engine is unreachable, died, or does not hold the weights it was sent."""

    exit_code = 3


class Stopped(Exception):
    """The engines were stopped (the run is over) while a rollout was sampling: it is abandoned."""


PROBE_TOKENS = 48  # tokens of the sync probe
PauseMode = Literal["abort", "wait"]


class VLLMServers:
    """vLLM servers at `urls` that serve the policy under the name `model`."""

    def __init__(self, urls: list[str], timeout: float = 600.0) -> None:
        if not urls:
            raise ValueError("VLLMServers needs at least one URL")
        self.urls = [server_root(url) for url in urls]
        self.http = httpx.Client(timeout=timeout)
        self.model = ""
        self.version: str | None = None
        self.step = 0  # the policy version the engines hold: the trainer's updates applied
        self._next = itertools.cycle(range(len(self.urls)))
        self._gate = threading.Condition()  # guards the four below
        self._paused = False  # a sync is under way: new requests wait
        self._in_flight = 0
        self._stopped = False
        self._idle = 0.0  # seconds with no request in flight, up to _idle_since
        self._idle_since = time.perf_counter()
        self.server: ManagedServer | None = None  # the engine started here, if any

    # ---- starting and checking -------------------------------------------------------------------

    @classmethod
    def start_local(
        cls, model_dir: str, log_path: Path, timeout: float = 600.0, **settings: Any
    ) -> VLLMServers:
        """Start one vLLM server for `model_dir` on a free loopback port, as `dr serve` would, with the
        development API the weight sync uses; wait until it answers."""
        from dr_core.serving import managed

        server, _ = managed(
            model_dir,
            "vllm",
            log_path,
            what="the rollout engine",
            env={"VLLM_SERVER_DEV_MODE": "1"},
            timeout_s=timeout,
            served_model_name="policy",
            **settings,
        )
        logger.info("starting a vLLM engine for the rollouts (log: %s)", log_path)
        try:
            with _as_engine_error():
                server.__enter__()
            engines = cls([server.url], timeout)
            engines.server = server
            engines.check()
        except BaseException:
            server.stop()
            raise
        return engines

    def check(self) -> None:
        """Every engine answers and serves one model (the first engine's name is the one used)."""
        for url in self.urls:
            try:
                response = self.http.get(f"{url}/v1/models", timeout=10.0)
                response.raise_for_status()
                names = [m["id"] for m in response.json().get("data", [])]
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                raise EngineError(
                    f"--rollout-url {url}: no vLLM server answers there ({_why(exc)})"
                ) from None
            if not names:
                raise EngineError(f"--rollout-url {url}: serves no model")
            self.model = self.model or names[0]

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.http.close()

    # ---- sampling ----------------------------------------------------------------------------------

    def complete(self, prompt: list[int], **params: Any) -> dict[str, Any]:
        """One /v1/completions choice for a prompt of token ids, from the next engine in turn."""
        return self.sample(prompt, **params)[0]

    def sample(self, prompt: list[int], **params: Any) -> tuple[dict[str, Any], int]:
        """(one /v1/completions choice, the policy version that sampled it), from the next engine in turn;
        waits while a sync is under way. Raises Stopped once the engines are stopped."""
        with self._gate:
            while self._paused and not self._stopped:
                self._gate.wait()
            if self._stopped:
                raise Stopped
            if not self._in_flight:
                self._idle += time.perf_counter() - self._idle_since
            self._in_flight += 1
            version = self.step
            url = self.urls[next(self._next)]
        try:
            body = {"model": self.model, "prompt": prompt, "return_token_ids": True, **params}
            try:
                response = self.http.post(f"{url}/v1/completions", json=body)
            except httpx.HTTPError as exc:
                if self._stopped:
                    raise Stopped from None
                raise EngineError(f"rollout engine {url}: {_why(exc)}") from None
            if response.status_code != 200:
                raise EngineError(f"rollout engine {url}: HTTP {response.status_code}: {response.text[:300]}")
            return dict(response.json()["choices"][0]), version
        finally:
            with self._gate:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle_since = time.perf_counter()
                self._gate.notify_all()

    def idle_s(self) -> float:
        """Seconds so far in which no request was in flight here (the engines had nothing to sample)."""
        with self._gate:
            now = time.perf_counter()
            return self._idle + (now - self._idle_since if not self._in_flight else 0.0)

    def stop(self) -> None:
        """End sampling: requests in flight are aborted and their rollouts raise Stopped, as do new ones."""
        with self._gate:
            self._stopped = True
            self._gate.notify_all()
        for url in self.urls:
            with contextlib.suppress(httpx.HTTPError):
                self.http.post(f"{url}/abort_requests", json={}, timeout=10.0)

    # ---- weight sync -------------------------------------------------------------------------------

    def sync(
        self,
        folder: Path | None,
        version: str,
        step: int = 0,
        pause: PauseMode | None = None,
        push: Callable[[], None] | None = None,
    ) -> None:
        """Every engine reloads the weights in `folder` in place (or `push` sends them into every engine:
        dr_train.rl.weight_sync) and takes `version` (the policy after `step` updates) as its name. New
        requests wait meanwhile. `pause` is for requests in flight (asynchronous RL): `abort` stops them
        where they are (their callers send them again after the sync), `wait` lets them finish first;
        either way vLLM's scheduler is paused for the reload and resumed after. Without it no request may
        be in flight (synchronous RL), and none is waited for."""
        with self._gate:
            self._paused = True
        try:
            if pause == "abort":
                for url in self.urls:
                    self._post(url, "/pause?mode=abort", None)
                # a request sent just before the pause may reach its engine after it: abort until none is left
                with self._gate:
                    while self._in_flight:
                        self._gate.release()
                        try:
                            for url in self.urls:
                                self._post(url, "/abort_requests", {})
                        finally:
                            self._gate.acquire()
                        self._gate.wait(timeout=0.2)
            else:
                with self._gate:
                    while self._in_flight:
                        self._gate.wait()
                if pause == "wait":
                    for url in self.urls:
                        self._post(url, "/pause?mode=wait", None)
            if push is not None:
                push()
            for url in self.urls:
                if push is None:
                    reload = {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}}
                    self._post(url, "/collective_rpc", reload)
                self._post(url, "/reset_prefix_cache", None)
                self._post(url, "/update_weight_version", {"new_version": version})
                held = self._get(url, "/weight_info").get("weight_version")
                if held != version:
                    raise EngineError(
                        f"rollout engine {url} holds weights {held!r} after the sync to {version!r}"
                    )
                if pause is not None:
                    self._post(url, "/resume", None)
            self.version = version
            with self._gate:
                self.step = step
        finally:
            with self._gate:
                self._paused = False
                self._gate.notify_all()

    def prompt_logprobs(self, url: str, tokens: list[int]) -> list[float]:
        """vLLM's log-probability of each token of `tokens` after the ones before it (len - 1 values)."""
        body = {"model": self.model, "prompt": tokens, "max_tokens": 1, "prompt_logprobs": 0}
        choice = self._post(url, "/v1/completions", body)["choices"][0]
        out = []
        for position, entry in zip(tokens[1:], choice["prompt_logprobs"][1:], strict=True):
            out.append(float(entry[str(position)]["logprob"]))
        return out

    def _post(self, url: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        try:
            response = self.http.post(f"{url}{path}", json=body)
        except httpx.HTTPError as exc:
            raise EngineError(f"rollout engine {url}{path}: {_why(exc)}") from None
        return _json(url, path, response)

    def _get(self, url: str, path: str) -> dict[str, Any]:
        try:
            response = self.http.get(f"{url}{path}")
        except httpx.HTTPError as exc:
            raise EngineError(f"rollout engine {url}{path}: {_why(exc)}") from None
        return _json(url, path, response)


def _json(url: str, path: str, response: httpx.Response) -> dict[str, Any]:
    if response.status_code == 404:
        raise EngineError(
            f"rollout engine {url} has no {path}: start it with VLLM_SERVER_DEV_MODE=1 (the weight sync "
            "uses vLLM's development API)"
        )
    if response.status_code != 200:
        raise EngineError(f"rollout engine {url}{path}: HTTP {response.status_code}: {response.text[:300]}")
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _as_engine_error() -> Iterator[None]:
    """A managed server's failure to start, as the EngineError rollouts raise."""
    try:
        yield
    except ServerError as exc:
        raise EngineError(str(exc)) from None


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class EnginePolicy:
    """chat() through vLLM engines, for the agent's rollouts; safe for concurrent rollouts."""

    def __init__(self, engines: VLLMServers, tokenizer: Any, max_context: int) -> None:
        self.engines = engines
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.config = LLMConfig(model=engines.model or "policy", base_url=engines.urls[0] + "/v1")

    def chat(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        **_: Any,
    ) -> ChatResult:
        # the same ChatModel signature and prompt as LocalPolicy.chat, deliberately: the two differ only in
        # where the tokens are sampled
        prompt = render(self.tokenizer, messages, tools)
        budget = new_tokens(prompt, self.max_context, max_tokens)
        if budget <= 0:
            return no_room(prompt)
        params: dict[str, Any] = {
            "max_tokens": budget,
            "temperature": temperature,
            "top_p": top_p,
            "logprobs": 0,
            "skip_special_tokens": True,
        }
        seed = getattr(_seed, "value", None)
        if seed is not None:
            params["seed"] = seed
        response: list[int] = []
        logprobs: list[float] = []
        versions: list[int] = []
        while True:
            # a request a weight sync aborted is sent again, its tokens so far continuing the prompt; they
            # keep the version that sampled them
            choice, version = self.engines.sample(prompt + response, **params)
            tokens = [int(t) for t in choice.get("token_ids") or []]
            scores = [float(x) for x in ((choice.get("logprobs") or {}).get("token_logprobs") or [])]
            if len(scores) != len(tokens):
                raise EngineError(
                    f"rollout engine returned {len(tokens)} tokens and {len(scores)} log-probabilities"
                )
            response += tokens
            logprobs += scores
            versions += [version] * len(tokens)
            finish = choice.get("finish_reason")
            if finish != "abort":
                break
            params["max_tokens"] = budget - len(response)
            if params["max_tokens"] <= 0:
                finish = "length"
                break
        recording = current_recording()
        if recording is not None:
            recording.turns.append(Turn(prompt, response, logprobs, versions))
        text = self.tokenizer.decode(response, skip_special_tokens=True)
        return ChatResult(
            message=Message(role="assistant", content=text),
            finish_reason="stop" if finish == "stop" else "length",
            usage=Usage(prompt_tokens=len(prompt), completion_tokens=len(response)),
        )


_seed = threading.local()


class sampling_seed:
    """Within this block, this thread's rollout requests ask the engine for this seed (reproducible
    samples for one rollout at a time)."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        _seed.value = self.seed

    def __exit__(self, *exc: object) -> None:
        _seed.value = None


def write_engine_weights(model: Any, tokenizer: Any, folder: Path) -> Path:
    """The policy as the folder the engines load and reload: a Hugging Face folder whose output layer is
    stored apart from the input embeddings. vLLM's in-place reload refreshes only the weights the files
    name, and a tied output layer is not among them (on the CPU build it keeps the old one), so the engine
    is started from, and reloads, this untied copy. Written beside `folder` and renamed into place."""
    import json
    import shutil

    from safetensors.torch import save_file

    from dr_train import checkpoint

    staging = folder.with_name(folder.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    checkpoint.save_model(model, staging)
    tokenizer.save_pretrained(staging)
    config_path = staging / "config.json"
    config = json.loads(config_path.read_text())
    if config.get("tie_word_embeddings"):
        head = model.get_output_embeddings().weight.detach().to("cpu").clone().contiguous()
        save_file({"lm_head.weight": head}, str(staging / "lm_head.safetensors"))
        index = staging / "model.safetensors.index.json"
        if index.is_file():
            mapping = json.loads(index.read_text())
            mapping["weight_map"]["lm_head.weight"] = "lm_head.safetensors"
            index.write_text(json.dumps(mapping, indent=2))
        config["tie_word_embeddings"] = False
        config_path.write_text(json.dumps(config, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder


def probe_tokens(tokenizer: Any) -> list[int]:
    """A fixed sequence to compare the engine's log-probabilities with the trainer's after a sync."""
    text = "The research agent searched the index, opened two articles and answered with a citation."
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return (ids * (PROBE_TOKENS // max(len(ids), 1) + 1))[:PROBE_TOKENS]
