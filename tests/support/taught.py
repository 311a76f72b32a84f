"""Two 1-hop world tasks, their index, and a tiny model that learnt their oracle trajectories by heart,
so that it researches as the teacher did: for tests that need a model that really calls the tools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DR = [sys.executable, "-m", "dr_cli.main"]


def dr(*args: object, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([*DR, *map(str, args)], capture_output=True, timeout=timeout)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    return result


def taught_world(root: Path) -> Path:
    """Builds ROOT/world, ROOT/index, ROOT/tasks.jsonl (two tasks), ROOT/traj.jsonl and ROOT/sft (the model
    that learnt them, 300 steps); returns the tasks file."""
    dr(
        "data",
        "world",
        "-o",
        root / "world",
        "--entities",
        "40",
        "--tasks",
        "24",
        "--max-hops",
        "1",
        "--seed",
        "3",
    )
    dr("data", "index", root / "world" / "corpus.jsonl", "-i", root / "index")
    tasks = root / "tasks.jsonl"
    tasks.write_text("".join((root / "world" / "train.jsonl").read_text().splitlines(keepends=True)[:2]))
    dr("data", "trajectories", tasks, "--index", root / "index", "-o", root / "traj.jsonl")
    (root / "traj8.jsonl").write_text((root / "traj.jsonl").read_text() * 8)
    dr(
        "train", "sft", root / "traj8.jsonl", "--model", "tiny:qwen2", "-o", root / "sft",
        "--max-len", "4096", "--max-steps", "300", "--lr", "3e-3", "--warmup", "5", "--vocab-size", "1024",
        "--no-grad-ckpt",
    )  # fmt: skip
    return tasks
