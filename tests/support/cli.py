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


def dr_world(folder: object, entities: int, tasks: int, report_tasks: int) -> None:
    """`dr data world -o FOLDER` of that size; fails the test with dr's stderr when it does not succeed."""
    result = dr(
        "data",
        "world",
        "-o",
        folder,
        "--entities",
        entities,
        "--tasks",
        tasks,
        "--report-tasks",
        report_tasks,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
