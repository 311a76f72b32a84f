"""Run an ASGI app with uvicorn on a free loopback port, in a thread, for the duration of a block."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (all held open while choosing, so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


@contextmanager
def serving(app: Any) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_ok(url: str, proc: Any, timeout: float = 120) -> None:
    """Poll `url` until it answers 200, failing early if the server process `proc` exits (as dr's own
    servers are awaited: dr_core.server.await_health)."""
    from dr_core.server import ServerError, await_health

    try:
        await_health(url, proc, timeout, name=f"the server at {url}")
    except ServerError as exc:
        raise AssertionError(str(exc)) from None
