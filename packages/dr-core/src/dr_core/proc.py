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
