"""Logs and progress bars, always on stderr; stdout is for data only.

Progress bars show only when stderr is a terminal and the run is not quiet (`dr -q`, or DR_QUIET=1).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")

logger = logging.getLogger("dr")
_quiet = False
_console: Console | None = None


def setup(quiet: bool = False, verbose: bool = False) -> None:
    """Route the `dr` logger to stderr: warnings only when quiet, debug when verbose."""
    global _quiet
    _quiet = quiet or os.environ.get("DR_QUIET", "") not in ("", "0")
    level = logging.WARNING if _quiet else logging.DEBUG if verbose else logging.INFO
    logger.setLevel(level)
    logger.propagate = False
    for old in list(logger.handlers):
        logger.removeHandler(old)
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console(), show_path=False, show_time=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)


def quiet() -> bool:
    return _quiet


def console() -> Console:
    """The rich console for humans: stderr."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True)
    return _console


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate `items`, drawing a progress bar on stderr when a person is watching."""
    if _quiet or not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    with Progress(*columns, TimeElapsedColumn(), console=console(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


@contextmanager
def stdout_for_data_only() -> Iterator[IO[str]]:
    """Send everything written to stdout (by libraries, C extensions included) to stderr, and yield a
    handle on the real stdout for the command's own data. Training engines print banners on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(os.dup(saved), "w", closefd=True)
    try:
        yield real
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        real.flush()
        real.close()


_KEY_LIKE = re.compile(
    r"(?i)\b(?:sk|pk|rk|ak)-[A-Za-z0-9_\-]{8,}"  # OpenAI-style keys
    r"|(?i:bearer)\s+[A-Za-z0-9._\-~+/=]{8,}"  # an Authorization header echoed back
    r"|(?<=[\"'\s{,(])(?:api[_-]?key|token|secret|password)[\"']?\s*[:=]\s*[\"']?[^\s\"',}]{4,}"
)


# The user-information part of a URL or DSN (`scheme://user:password@host`), which may hold a password.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@?#\"'<>]*@")


def strip_userinfo(url: str) -> str:
    """`url` without its `user:password@` part: what a URL looks like in a log line or an error."""
    return _USERINFO.sub(r"\1", url)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with the given secrets, the user and password part of every URL or DSN, and anything that
    looks like a key (sk-..., a bearer token, api_key=...) replaced by '***': for upstream error bodies
    that are logged or passed on to clients."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _USERINFO.sub(r"\1***@", text)
    return _KEY_LIKE.sub("***", text)
