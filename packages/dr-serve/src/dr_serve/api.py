"""The research API: POST a question, receive the agent's events as server-sent events, then the report.

    POST /v1/research      {"question": "...", "stream": true} -> text/event-stream (JSON if stream=false)
    GET  /v1/runs/{id}     a run: its status, and its Trajectory once finished
    GET  /health           liveness

Runs execute in worker threads; a run whose client disconnects goes on and can be fetched by id. Beyond
`max_concurrent` runs in progress, POST answers 429. A request body over `max_request_bytes` gets 413; a
client's `max_steps` is capped at the server agent's own. Finished runs are kept on disk (`runs_dir`, else
a temporary folder) with only the newest `runs_in_memory` in memory. With an API key set, every route but
/health needs `Authorization: Bearer <key>`, /openapi.json included, and the browsable /docs and /redoc
are off. Error texts from the model server are scrubbed of anything that looks like a key.
"""

from __future__ import annotations

import asyncio
import hmac
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from dr_core.log import logger, scrub
from dr_core.records import Trajectory

if TYPE_CHECKING:
    from dr_agent.agent import ResearchAgent


class ApiConfig(BaseModel):
    """Section [api] of the config file, DR_API_* variables, or dr serve's --api-* flags."""

    api_key: str | None = None
    max_concurrent: int = Field(4, ge=1)
    runs_dir: Path | None = Field(
        None, description="Keep finished runs here (JSON), to fetch after restarts; else a temporary folder."
    )
    runs_in_memory: int = Field(256, ge=0, description="Finished runs also kept in memory (the newest).")
    max_request_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies get 413.")


class ResearchRequest(BaseModel):
    question: str = Field(min_length=1)
    stream: bool = True
    max_steps: int | None = Field(None, ge=1)


def _sse(event: dict[str, Any]) -> bytes:
    return (
        b"event: " + str(event.get("type", "message")).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
    )


class RunStore:
    """Runs in progress in memory; finished runs on disk, and the newest `in_memory` of them in memory."""

    def __init__(self, directory: Path | None, in_memory: int = 256) -> None:
        self._tmp = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dr-runs-")
            directory = Path(self._tmp.name)
        self.directory = directory
        self.in_memory = in_memory
        self.running: dict[str, dict[str, Any]] = {}
        self.finished: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)

    def start(self, run_id: str, question: str) -> None:
        with self.lock:
            self.running[run_id] = {"id": run_id, "status": "running", "question": question}

    def finish(self, run_id: str, trajectory: Trajectory | None, error: str | None) -> None:
        """Record the run as finished: in memory first (so it can always be fetched while it is there),
        then on disk; a write that fails is logged and raised."""
        entry = {
            "id": run_id,
            "status": "failed" if error else "done",
            "error": error,
            "trajectory": trajectory.model_dump(mode="json") if trajectory is not None else None,
        }
        with self.lock:
            entry["question"] = self.running.pop(run_id, {}).get("question")
            self.finished[run_id] = entry
            while len(self.finished) > self.in_memory:
                self.finished.popitem(last=False)
        path = self.directory / f"{run_id}.json"
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(orjson.dumps(entry))
        tmp.replace(path)

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self.lock:
            if run_id in self.running:
                return self.running[run_id]
            if run_id in self.finished:
                return self.finished[run_id]
        if all(c.isalnum() or c == "-" for c in run_id):
            path = self.directory / f"{run_id}.json"
            if path.is_file():
                return orjson.loads(path.read_bytes())
        return None


class _BodyLimit:
    """ASGI middleware: the whole request body is read (up to `limit` bytes) before the app sees any of
    it; a body over `limit`, declared or as it streams in, gets 413 and the app is never called, so
    nothing runs for a refused request."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, receive, send)
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away before its body was whole: nothing to run
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                return await self._too_large(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            # the body once, whole; after it, the client's own messages (a disconnect, for streaming)
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            message = await receive()
            return dict(message)

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await JSONResponse({"error": f"request body over {self.limit} bytes"}, status_code=413)(
            scope, receive, send
        )


def create_app(agent: ResearchAgent, config: ApiConfig | None = None) -> FastAPI:
    """The FastAPI app over a ResearchAgent, which every run shares (its clients are thread-safe)."""
    config = config or ApiConfig()
    if config.api_key:  # no open documentation of a keyed API
        app = FastAPI(title="dr research API", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    else:
        app = FastAPI(title="dr research API", version="1")
    store = RunStore(config.runs_dir, config.runs_in_memory)
    slots = threading.BoundedSemaphore(config.max_concurrent)
    secrets = [config.api_key, getattr(getattr(agent.llm, "config", None), "api_key", None)]
    budget = agent.config.max_steps

    def authorize(request: Request) -> None:
        if not config.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), config.api_key.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    if config.api_key:

        @app.get("/openapi.json", dependencies=[Depends(authorize)], include_in_schema=False)
        def openapi() -> Any:
            return JSONResponse(app.openapi())

    @app.get("/v1/runs/{run_id}", dependencies=[Depends(authorize)])
    def get_run(run_id: str) -> Any:
        run = store.get(run_id)
        if run is None:
            raise HTTPException(404, f"no run {run_id}")
        return JSONResponse(run)

    @app.post("/v1/research", dependencies=[Depends(authorize)])
    async def research(body: ResearchRequest) -> Any:
        if not slots.acquire(blocking=False):
            return JSONResponse(
                {"error": f"too many research runs in progress (limit {config.max_concurrent}); retry later"},
                status_code=429,
                headers={"Retry-After": "5"},
            )
        run_id = uuid.uuid4().hex
        store.start(run_id, body.question)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def emit(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, {**event, "run_id": run_id})

        def work() -> None:
            trajectory = None
            error = None
            try:
                # a client may ask for fewer steps than the server's budget, never more
                steps = min(body.max_steps, budget) if body.max_steps else None
                runner = _with_config(agent, {"max_steps": steps}) if steps and steps != budget else agent
                trajectory = runner.run(body.question, on_event=emit)
                if trajectory.stop_reason == "error":
                    error = scrub(str(trajectory.meta.get("error")), secrets)
                    trajectory.meta["error"] = error
            except Exception as exc:  # reported to the client and kept with the run, never lost
                logger.exception("research run %s failed", run_id)
                error = scrub(f"{type(exc).__name__}: {exc}", secrets)
            finally:
                try:
                    store.finish(run_id, trajectory, error)
                except OSError as exc:
                    logger.error("research run %s: could not be kept on disk: %s", run_id, exc)
                finally:
                    slots.release()
                    final = trajectory.final if trajectory is not None else None
                    done = {"type": "report", "final": final, "error": error}
                    done["trajectory_id"] = trajectory.id if trajectory is not None else None
                    loop.call_soon_threadsafe(queue.put_nowait, {**done, "run_id": run_id})
                    loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = threading.Thread(target=work, name=f"run-{run_id[:8]}", daemon=True)
        worker.start()

        if not body.stream:
            while (event := await queue.get()) is not None:
                last = event
            return JSONResponse(store.get(run_id) or last)

        async def events() -> AsyncIterator[bytes]:
            yield _sse({"type": "run", "run_id": run_id})
            while (event := await queue.get()) is not None:
                yield _sse(event)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    app.add_middleware(_BodyLimit, limit=config.max_request_bytes)
    return app


def _with_config(agent: ResearchAgent, overrides: dict[str, Any]) -> ResearchAgent:
    """A copy of `agent` sharing its clients, with some AgentConfig fields changed for one run."""
    from dr_agent.agent import ResearchAgent

    return ResearchAgent(
        agent.llm,
        agent.backend,
        agent.fetcher,
        agent.config.model_copy(update=overrides),
        agent.system_prompt,
    )
