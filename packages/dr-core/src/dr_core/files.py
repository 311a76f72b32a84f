"""Where an output really goes, and writing a whole file so that a reader never sees half of it.

Every writer of dr (JSONL outputs, side files, summaries, tables, plots) goes through `output_target`:
- a symbolic link is followed, so the file it points to is written (atomically, beside that file) and the
  link stays a link;
- a character device or a FIFO (`/dev/null`, `/dev/stdout`, a named pipe) is written through, as any Unix
  tool writes it: it is never renamed over or replaced by a regular file;
- a directory is refused with its name.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_core.errors import InputError


@dataclass(frozen=True)
class Target:
    path: Path  # the file written: the symlink's target, resolved
    stream: bool  # a device or FIFO: written in place, no temporary file, no rename


def output_target(path: str | Path) -> Target:
    """What writing `path` writes (see the module docstring); InputError for a directory."""
    given = Path(path)
    real = Path(os.path.realpath(given))
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return Target(real, stream=False)
    except OSError as exc:
        raise InputError(f"{given}: cannot write ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{given}: is a directory; give a file name")
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return Target(real, stream=True)
    if not stat.S_ISREG(mode):
        raise InputError(f"{given}: not a regular file, a character device or a FIFO; refusing to replace it")
    return Target(real, stream=False)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`'s target to write the whole file to; renamed over the target when
    the block ends without an error, removed when it fails (the old file stays as it was). For a device
    or FIFO the target itself is yielded."""
    target = output_target(path)
    if target.stream:
        yield target.path
        return
    target.path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.path.name}.", suffix=".tmp", dir=target.path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if target.path.exists():
            os.chmod(tmp, stat.S_IMODE(os.stat(target.path).st_mode))
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target.path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write the whole of `data` to `path` through `atomic_path`."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(payload)


def save_figure(figure: Any, path: str | Path, **options: Any) -> None:
    """A matplotlib figure saved through `atomic_path`, in the format `path`'s suffix names (PNG without)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=fmt, **options)
