"""Deadlines that hold: a fetch's timeout over headers that trickle in, and `dr research --max-time`
against a server that accepts connections and never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dr_agent.fetch import FetchConfig, Fetcher, FetchError
from support.cli import dr


@contextmanager
def raw_server(serve) -> Iterator[str]:
    """A TCP server on loopback whose every connection is handed to `serve(conn)` in a thread."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            conns.append(conn)
            threading.Thread(target=serve, args=(conn, stop), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in conns:
            conn.close()
        listener.close()


def trickle_headers(conn: socket.socket, stop: threading.Event) -> None:
    """Read the request, then send an endless header one byte every 0.4 s (inside any read timeout)."""
    conn.recv(65536)
    head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000
    for byte in head:
        if stop.is_set():
            return
        try:
            conn.sendall(bytes([byte]))
        except OSError:
            return
        time.sleep(0.4)


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Accept and read, and never answer."""
    conn.settimeout(0.2)
    while not stop.is_set():
        try:
            if conn.recv(65536) == b"":
                return
        except TimeoutError:
            continue
        except OSError:
            return


def test_one_deadline_holds_over_headers_that_trickle_in():
    fetcher = Fetcher(FetchConfig(allow_private=True, timeout_s=2.0))
    with raw_server(trickle_headers) as url:
        started = time.monotonic()
        with pytest.raises(FetchError) as caught:
            fetcher.fetch(f"{url}/page")
        elapsed = time.monotonic() - started
    assert elapsed < 3.5  # before: 32 to 39 s
    # the message gives the time that really passed, next to the limit
    reported = float(str(caught.value).split("timed out after ")[1].split("s")[0])
    assert abs(reported - elapsed) < 0.5 and "the limit is 2s" in str(caught.value)


def test_a_run_with_max_time_ends_on_time_against_a_server_that_never_answers(tmp_path, drb_index):
    with raw_server(silent) as url:
        started = time.monotonic()
        result = dr(
            "research",
            "What is in the corpus?",
            "--base-url",
            f"{url}/v1",
            "--model",
            "m",
            "--index",
            drb_index,
            "--max-time",
            "5",
            "--trajectory",
            tmp_path / "t.json",
            timeout=120,
        )
        elapsed = time.monotonic() - started
    assert elapsed < 30  # the run's 5 s plus starting Python; before: still running after 100 s
    assert result.returncode == 3, result.stderr  # the code of every model-server failure
    assert b"time_budget" in result.stderr and b"Traceback" not in result.stderr
    import json

    assert json.loads((tmp_path / "t.json").read_text())["stop_reason"] == "time_budget"


def test_a_model_call_is_bounded_by_the_time_it_is_given():
    from dr_core.errors import DeadlineExceeded
    from dr_core.llm import LLMClient, LLMConfig

    with raw_server(silent) as url:
        client = LLMClient(LLMConfig(base_url=f"{url}/v1", max_retries=3))
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="no reply within"):
            client.chat([{"role": "user", "content": "hi"}], timeout_s=1.5)
        assert time.monotonic() - started < 3.0


def test_waiting_for_a_request_slot_is_bounded_by_the_time_given_too():
    from dr_core.errors import DeadlineExceeded
    from dr_core.llm import LLMClient, LLMConfig

    client = LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1", concurrency=1))
    client._slots.acquire()  # another call holds the only slot
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="no request slot came free"):
        client.chat([{"role": "user", "content": "hi"}], timeout_s=0.5)
    assert time.monotonic() - started < 2.0
    client._slots.release()
