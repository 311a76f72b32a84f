"""Where a benchmark script's results go: the markdown table to stdout, and with --markdown / --json also
to those files, each written whole (a temporary file renamed into place), so that an interrupted run never
leaves half a table. Standard library only: the GPU check runs the benchmarks before anything is installed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def _write(path: str | Path, text: str) -> None:
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def emit(
    text: str, markdown: str | Path | None, json_path: str | Path | None = None, data: Any = None
) -> None:
    sys.stdout.write(text)
    if markdown:
        _write(markdown, text)
    if json_path:
        _write(json_path, json.dumps(data))
