"""A server in a child process whose life is ours: started on a port checked to be free, awaited until it
answers its health check (its own answer: the child must still run), stopped, and named with its log when it
fails. Torch- and web-framework-free, so every package can start one (RL's rollout engines and judge, the
main job's servers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

from dr_core.errors import DrError, InputError
from dr_core.proc import child_of_this_process, port_in_use

POLL_S = 0.5


def server_root(url: str) -> str:
    """A vLLM server's root URL from `url` as a user gives it: `http://host:port`, or the `.../v1` form
    that `dr serve` prints (the trailing `/v1` is dropped). ValueError for anything that is not an http(s)
    URL with a host and a valid port."""
    import httpx

    text = url.strip().rstrip("/")
    try:
        parsed = httpx.URL(text)
        parsed.port  # noqa: B018 - parsing the port is the check
    except (httpx.InvalidURL, ValueError) as exc:
        raise ValueError(f"{url!r} is not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{url!r}: give an http(s) URL with a host, e.g. http://127.0.0.1:8000/v1")
    if text.endswith("/v1"):
        text = text[: -len("/v1")]
    return text


class ServerError(DrError):
    """A managed server exited or did not become healthy."""

    exit_code = 3


class ManagedServer:
    """`argv`, a server that listens on `host:port` and answers 200 at `health` when ready.

    Used as a context manager: started and awaited on entry, stopped on exit. `log` takes the child's
    output (None: it goes to ours)."""

    def __init__(
        self,
        argv: list[str],
        port: int,
        *,
        name: str,
        host: str = "127.0.0.1",
        log: Path | None = None,
        env: dict[str, str] | None = None,
        health: str = "/health",
        timeout_s: float = 600.0,
    ) -> None:
        self.argv = argv
        self.host, self.port = host, port
        self.name = name
        self.log = log
        self.env = env
        self.health = health
        self.timeout_s = timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self._sink: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's root URL (without /v1)."""
        return f"http://{self.host}:{self.port}"

    def _where(self) -> str:
        return f"; see {self.log}" if self.log is not None else ""

    def start(self) -> ManagedServer:
        if port_in_use(self.host, self.port):
            raise InputError(
                f"{self.name}: {self.host}:{self.port} is already in use; stop what listens there"
            )
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self._sink = self.log.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env={**os.environ, **(self.env or {})},
            stdout=self._sink,
            stderr=subprocess.STDOUT if self._sink is not None else None,
            preexec_fn=child_of_this_process(),
            # a process group of its own, so that stop() ends the workers it starts too (vLLM's engine core
            # outlives an API server killed outright), and a terminal's Ctrl-C reaches it only through us
            start_new_session=True,
        )
        return self

    def wait_healthy(self, interrupted: Callable[[], bool] | None = None) -> bool:
        """Return True once the server answers 200 at its health path while its child still runs: the port
        was free when it started, so the answer is its own. ServerError when it exits or the time runs out;
        False as soon as `interrupted()` says to stop waiting (a signal to the process that waits)."""
        assert self.process is not None, "start() first"
        try:
            return await_health(
                self.url + self.health, self.process, self.timeout_s, self.name, self._where(), interrupted
            )
        except ServerError:
            self.stop()
            raise

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 30.0) -> int | None:
        """Stop the child (SIGTERM, then SIGKILL after `grace_s`) and whatever it started that is still
        running (SIGKILL to its process group); the child's exit code."""
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing of it is left
                os.killpg(process.pid, signal.SIGKILL)
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        return None if process is None else process.returncode

    def __enter__(self) -> ManagedServer:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def await_health(
    url: str,
    process: subprocess.Popen[bytes],
    timeout_s: float,
    name: str = "the server",
    where: str = "",
    interrupted: Callable[[], bool] | None = None,
) -> bool:
    """Poll `url` until it answers 200 while `process` (the server's child) still runs: True then; False as
    soon as `interrupted()` says to stop waiting; ServerError (naming `name`, and `where` its log is) when
    the process exits or `timeout_s` runs out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if interrupted is not None and interrupted():
            return False
        if process.poll() is not None:
            raise ServerError(f"{name} exited with code {process.returncode} before it was ready{where}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                time.sleep(POLL_S)  # a child that fails to bind exits at once: give it the time
                if process.poll() is None:
                    return True
                continue
        except httpx.HTTPError:
            pass
        time.sleep(POLL_S)
    raise ServerError(f"{name} was not healthy at {url} after {timeout_s:.0f}s{where}")
