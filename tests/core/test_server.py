"""ManagedServer: a server child started on a free port, awaited until its own health check answers, and
stopped; one that dies first, or a port already taken, is a clear error naming the log."""

from __future__ import annotations

import socket
import sys
import textwrap

import httpx
import pytest

from dr_core.errors import InputError
from dr_core.proc import free_port
from dr_core.server import ManagedServer, ServerError

HEALTHY = textwrap.dedent(
    """
    import sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer
    time.sleep(1.0)  # not ready at once, as a model server is not
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
        def log_message(self, *a):
            pass
    print("serving", flush=True)
    HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def test_a_server_is_awaited_until_healthy_and_stopped(tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    with ManagedServer([sys.executable, "-c", HEALTHY, str(port)], port, name="toy", log=log) as server:
        assert httpx.get(server.url + "/health").status_code == 200
        assert server.running()
    assert not server.running() and server.process is not None and server.process.returncode is not None
    assert "serving" in log.read_text()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_a_server_that_exits_before_it_is_ready_names_its_log(tmp_path):
    port = free_port()
    log = tmp_path / "dies.log"
    code = "import sys; print('no model here', file=sys.stderr); sys.exit(7)"
    with pytest.raises(ServerError, match=rf"exited with code 7 before it was ready; see {log}"):
        with ManagedServer([sys.executable, "-c", code], port, name="toy", log=log):
            pass
    assert "no model here" in log.read_text()


def test_a_port_already_in_use_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ManagedServer([sys.executable, "-c", HEALTHY, str(port)], port, name="toy")
        with pytest.raises(InputError, match="already in use"):
            server.start()
        assert server.process is None


def test_a_server_that_never_gets_healthy_times_out_and_is_stopped(tmp_path):
    port = free_port()
    sleeper = ManagedServer(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        port,
        name="toy",
        log=tmp_path / "l",
        timeout_s=2,
    )
    with pytest.raises(ServerError, match="not healthy"):
        with sleeper:
            pass
    assert not sleeper.running()


# a server that starts a worker of its own and, stopped, leaves it behind (vLLM's API server and its engine
# core when the API server is killed outright); the worker writes its pid first
WITH_WORKER = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(sys.argv[2], "w").write(str(worker.pid))
    signal.signal(signal.SIGTERM, lambda *a: None)  # deaf to SIGTERM: stop() has to kill it
    from http.server import BaseHTTPRequestHandler, HTTPServer
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
        def log_message(self, *a):
            pass
    HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def test_stopping_a_server_ends_the_workers_it_started_too(tmp_path):
    import os
    import time

    port = free_port()
    pid_file = tmp_path / "worker.pid"
    server = ManagedServer([sys.executable, "-c", WITH_WORKER, str(port), str(pid_file)], port, name="toy")
    with server:
        worker = int(pid_file.read_text())
        os.kill(worker, 0)  # alive
        server.stop(grace_s=1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{worker}/stat") as stat:  # a zombie waiting for its reaper is gone too
            if stat.read().split(") ")[1].startswith("Z"):
                break
        time.sleep(0.1)
    else:
        os.kill(worker, 9)
        pytest.fail("the server's worker outlived it")
