"""Two 1-hop world tasks, their index, and a tiny model that learnt their oracle trajectories by heart,
so that it researches as the teacher did: for tests that need a model that really calls the tools."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support.cli import DR


def dr(*args: object, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([*DR, *map(str, args)], capture_output=True, timeout=timeout)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    return result


def write_unsure(root: Path) -> Path:
    """ROOT/mixed.jsonl: each of ROOT/traj.jsonl's oracle trajectories, and as often the same trajectory
    ending in "Answer: unknown". A model that learns them researches as the teacher did, then answers right
    about half of the time."""
    mixed = []
    for line in (root / "traj.jsonl").read_text().splitlines():
        record = json.loads(line)
        wrong = json.loads(line)
        right_line = record["final"].split("\n", 1)[0]
        wrong["final"] = record["final"].replace(right_line, "Answer: unknown", 1)
        turn = [m for m in wrong["messages"] if m["role"] == "assistant"][-1]
        call = turn["tool_calls"][-1]
        assert call["name"] == "answer"
        call["arguments"]["text"] = wrong["final"]
        mixed += [json.dumps(record), json.dumps(wrong)]
    (root / "mixed.jsonl").write_text("\n".join(mixed * 8) + "\n")
    return root / "mixed.jsonl"


def taught_world(root: Path, model: str = "tiny:qwen2", unsure: bool = False) -> Path:
    """Builds ROOT/world, ROOT/index, ROOT/tasks.jsonl (two tasks), ROOT/traj.jsonl and ROOT/sft (a `model`
    that learnt them, 300 steps; with `unsure`, learnt write_unsure's mix); returns the tasks file."""
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
    data = write_unsure(root) if unsure else root / "traj8.jsonl"
    dr(
        "train", "sft", data, "--model", model, "-o", root / "sft",
        "--max-len", "4096", "--max-steps", "300", "--lr", "3e-3", "--warmup", "5", "--vocab-size", "1024",
        "--no-grad-ckpt",
    )  # fmt: skip
    return tasks
