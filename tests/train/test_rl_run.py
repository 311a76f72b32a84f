"""dr train rl on a tiny model and a small world: the reward goes up, PPO runs, resume continues."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DR = [sys.executable, "-m", "dr_cli.main"]


def dr(*args, timeout=900):
    result = subprocess.run([*DR, *map(str, args)], capture_output=True, timeout=timeout, env=os.environ)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    return result


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    """A world of 1-hop tasks and a tiny model that has half learnt its oracle trajectories by heart."""
    root = tmp_path_factory.mktemp("rl")
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
    dr(
        "data",
        "trajectories",
        root / "world" / "train.jsonl",
        "--index",
        root / "index",
        "-o",
        root / "traj.jsonl",
    )
    tasks = root / "tasks.jsonl"
    tasks.write_text("".join((root / "world" / "train.jsonl").read_text().splitlines(keepends=True)[:6]))
    dr(
        "train", "sft", root / "traj.jsonl", "--model", "tiny:qwen2", "-o", root / "sft",
        "--max-len", "4096", "--max-steps", "60", "--lr", "3e-3", "--warmup", "5", "--vocab-size", "1024",
        "--no-grad-ckpt",
    )  # fmt: skip
    return root, tasks


def rl(root: Path, tasks: Path, out: str, *extra: str):
    return dr(
        "train", "rl", tasks, "--model", root / "sft", "--index", root / "index", "-o", root / out,
        "--tasks-per-step", "6", "--group", "4", "--max-steps", "6", "--max-tokens", "8000",
        "--concurrency", "2", "--temperature", "1.0", *extra,
    )  # fmt: skip


@pytest.mark.slow
def test_grpo_raises_the_reward_on_a_small_world(small_world):
    root, tasks = small_world
    rl(root, tasks, "grpo", "--algo", "grpo", "--steps", "8", "--lr", "2e-3", "--kl-coef", "0.001")
    metrics = [json.loads(line) for line in (root / "grpo" / "metrics.jsonl").read_text().splitlines()]
    rewards = [m["reward_mean"] for m in metrics]
    assert len(rewards) == 8
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards
    assert all(m["tool_calls"] > 0 for m in metrics)  # the rollouts really searched and opened


@pytest.mark.slow
def test_ppo_trains_a_value_head_and_a_killed_run_resumes(small_world):
    root, tasks = small_world
    first = rl(root, tasks, "ppo", "--algo", "ppo", "--steps", "2", "--lr", "1e-3", "--save-every", "1")
    assert json.loads(first.stdout)["steps"] == 2
    assert (root / "ppo" / "value_head.pt").is_file()
    assert (root / "ppo" / "checkpoint-1" / "value_head.pt").is_file()
    # as if killed during step 2: the final model was never written, the step-1 checkpoint was
    (root / "ppo" / "trainer_state.json").unlink()
    second = rl(root, tasks, "ppo", "--algo", "ppo", "--steps", "2", "--lr", "1e-3", "--resume")
    assert json.loads(second.stdout)["steps"] == 2
    metrics = [json.loads(line) for line in (root / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[-1]["value_loss"] >= 0 and "kl" in metrics[-1]
