"""Child processes whose life is tied to ours: Linux ends them when the process that started them dies,
even when it is killed outright (SIGKILL), which leaves it no chance to stop them itself (`dr serve`'s
engine, `dr train --nproc`'s launcher, the main job's commands); and a free port for one to listen on."""

from __future__ import annotations

import functools
import os
import signal
import socket
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int, prctl: Callable[..., int] | None) -> None:
    """In a child, before exec (`preexec_fn`): ask Linux to send it SIGTERM when the process that started it
    (pid `parent`) dies. A parent already gone by then ends the child at once."""
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def child_of_this_process() -> Callable[[], None]:
    """A `preexec_fn` tying the child's life to this process (see die_with_parent; Linux only, elsewhere
    it does nothing). libc is looked up here, in the parent: the child between fork and exec only calls."""
    prctl = None
    if sys.platform.startswith("linux"):
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    return functools.partial(die_with_parent, os.getpid(), prctl)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (a child started next can bind it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether a server already listens on `host:port`: binding it fails. SO_REUSEADDR is set, as servers
    set it, so connections of a server that stopped (TIME_WAIT) do not count; a host that is no address
    of this machine cannot be checked, and counts as free (the server's own bind then says why)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                import errno

                if exc.errno == errno.EADDRINUSE:
                    return True
    return False
