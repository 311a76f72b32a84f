"""The `dr` command as a user runs it, in a child process: `dr(*args)` gives the CompletedProcess."""

from __future__ import annotations

import os
import subprocess
import sys

DR = [sys.executable, "-m", "dr_cli.main"]


def dr(
    *args: object, env: dict[str, str] | None = None, input: bytes | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*DR, *map(str, args)],
        capture_output=True,
        env={**os.environ, **(env or {})},
        input=input,
        timeout=timeout,
    )
