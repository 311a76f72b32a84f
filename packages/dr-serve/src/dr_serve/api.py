"""The research API: POST a question, receive the agent's events as server-sent events, then the report.

    POST /v1/research      {"question": "...", "stream": true} -> text/event-stream (JSON if stream=false)
    GET  /v1/runs/{id}     a run: its status, and its Trajectory once finished
    GET  /health           liveness

Runs execute in worker threads; a run whose client disconnects goes on and can be fetched by id. Beyond
`max_concurrent` runs in progress, POST answers 429. With an API key set, every route but /health needs
`Authorization: Bearer <key>`.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from dr_core.log import logger
from dr_core.records import Trajectory


class ApiConfig(BaseModel):
    """Section [api] of the config file, DR_API_* variables, or dr serve's --api-* flags."""

    api_key: str | None = None
    max_concurrent: int = Field(4, ge=1)
    runs_dir: Path | None = Field(
        None, description="Keep finished runs here (JSON), to fetch after restarts."
    )


class ResearchRequest(BaseModel):
    question: str = Field(min_length=1)
    stream: bool = True
    max_steps: int | None = Field(None, ge=1)


def _sse(event: dict[str, Any]) -> bytes:
    return (
        b"event: " + str(event.get("type", "message")).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
    )


class RunStore:
    """Runs in memory, and on disk when a folder is given."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.runs: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def start(self, run_id: str, question: str) -> None:
        with self.lock:
            self.runs[run_id] = {"id": run_id, "status": "running", "question": question}

    def finish(self, run_id: str, trajectory: Trajectory | None, error: str | None) -> None:
        entry = {
            "id": run_id,
            "status": "failed" if error else "done",
            "error": error,
            "trajectory": trajectory.model_dump(mode="json") if trajectory is not None else None,
        }
        with self.lock:
            entry["question"] = self.runs.get(run_id, {}).get("question")
            self.runs[run_id] = entry
        if self.directory is not None:
            path = self.directory / f"{run_id}.json"
            tmp = path.with_name(path.name + ".partial")
            tmp.write_bytes(orjson.dumps(entry))
            tmp.replace(path)

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self.lock:
            if run_id in self.runs:
                return self.runs[run_id]
        if self.directory is not None and all(c.isalnum() or c == "-" for c in run_id):
            path = self.directory / f"{run_id}.json"
            if path.is_file():
                return orjson.loads(path.read_bytes())
        return None


def create_app(agent: Any, config: ApiConfig | None = None) -> FastAPI:
    """The FastAPI app over a ResearchAgent, which every run shares (its clients are thread-safe)."""
    config = config or ApiConfig()
    app = FastAPI(title="dr research API", version="1")
    store = RunStore(config.runs_dir)
    slots = threading.BoundedSemaphore(config.max_concurrent)

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
                overrides = {"max_steps": body.max_steps} if body.max_steps else {}
                runner = agent
                if overrides:
                    runner = _with_config(runner, overrides)
                trajectory = runner.run(body.question, on_event=emit)
                if trajectory.stop_reason == "error":
                    error = str(trajectory.meta.get("error"))
            except Exception as exc:  # reported to the client and kept with the run, never lost
                logger.exception("research run %s failed", run_id)
                error = f"{type(exc).__name__}: {exc}"
            finally:
                store.finish(run_id, trajectory, error)
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

    return app


def _with_config(agent: Any, overrides: dict[str, Any]) -> Any:
    """A copy of `agent` sharing its clients, with some AgentConfig fields changed for one run."""
    from dr_agent.agent import ResearchAgent

    return ResearchAgent(
        agent.llm,
        agent.backend,
        agent.fetcher,
        agent.config.model_copy(update=overrides),
        agent.system_prompt,
    )
