"""dr train rl on a tiny model and a small world: the reward goes up, PPO runs, resume continues."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from support import must
from support.cli import DR
from support.taught import taught_world, write_unsure


def dr(*args, timeout=900):
    result = subprocess.run([*DR, *map(str, args)], capture_output=True, timeout=timeout, env=os.environ)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    return result


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    """Two 1-hop world tasks and a tiny model that learnt their oracle trajectories by heart, so its
    rollouts call the tools the way the teacher did."""
    root = tmp_path_factory.mktemp("rl")
    tasks = taught_world(root)
    return root, tasks


@pytest.fixture(scope="module")
def unsure_policy(small_world):
    """The same model taught each task's oracle trajectory and, as often, the same trajectory ending in
    "Answer: unknown": it researches as the teacher did, then answers right about half of the time."""
    root, _ = small_world
    write_unsure(root)
    dr(
        "train", "sft", root / "mixed.jsonl", "--model", "tiny:qwen2", "-o", root / "unsure",
        "--max-len", "4096", "--max-steps", "300", "--lr", "3e-3", "--warmup", "5", "--vocab-size", "1024",
        "--no-grad-ckpt",
    )  # fmt: skip
    return root / "unsure"


def rl(root: Path, tasks: Path, out: str, *extra: str, model: Path | None = None):
    return dr(
        "train", "rl", tasks, "--model", model or root / "sft", "--index", root / "index", "-o", root / out,
        "--tasks-per-step", "2", "--group", "4", "--max-steps", "6", "--max-tokens", "8000",
        "--concurrency", "2", "--temperature", "0.9", "--lr", "5e-5", *extra,
    )  # fmt: skip


def answer_probability(model_dir: Path, trajectory: dict) -> float:
    """The chance that the model, having researched as the oracle did, writes the oracle's answer: the
    product of its token probabilities after "Answer: " in the final tool call. With the research steps
    learnt by heart, this is the expected reward of a rollout."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dr_core.llm import to_wire
    from dr_data.sft import to_example

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    example = must(to_example(trajectory)[1])
    wire = [to_wire(m) for m in example.messages]
    text: Any = tokenizer.apply_chat_template(wire, tools=list[Any](example.tools), tokenize=False)
    start = text.rindex('"Answer: ') + len('"Answer: ')
    answer = text[start : text.index("\\n", start)]
    prefix = tokenizer(text[:start], add_special_tokens=False)["input_ids"]
    ids = tokenizer(text[:start] + answer, add_special_tokens=False)["input_ids"]
    assert ids[: len(prefix)] == prefix and len(ids) > len(prefix)
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    targets = torch.tensor(ids[1:])
    picked = logprobs[torch.arange(len(targets)), targets][len(prefix) - 1 :]
    return float(picked.sum().exp())


def metrics_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_grpo_rollouts_research_through_the_tools_and_train_on_what_was_sampled(small_world):
    root, tasks = small_world
    # --train-flat-groups: every group trains, even one whose samples all got the same reward
    result = rl(
        root, tasks, "grpo", "--algo", "grpo", "--steps", "2", "--kl-coef", "0.01", "--train-flat-groups"
    )
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and summary["rollouts"] == 8
    metrics = metrics_of(root / "grpo")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["tool_calls"] > 1  # the policy searched and opened through the agent's tools
        assert 0.0 <= m["reward_mean"] <= 1.0 and m["trained_tokens"] > 0 and m["flat_groups"] == 0
    # the update ran on every sampled token; whether it moved the policy depends on the groups
    # disagreeing (the arithmetic of that is pinned in test_rl_math)
    assert (root / "grpo" / "model.safetensors").is_file() and (root / "grpo" / "optimizer.pt").is_file()


@pytest.mark.slow
def test_grpo_raises_the_reward_of_a_policy_that_answers_right_half_of_the_time(small_world, unsure_policy):
    root, tasks = small_world
    trajectories = [json.loads(line) for line in (root / "traj.jsonl").read_text().splitlines()]
    before = [answer_probability(unsure_policy, t) for t in trajectories]
    assert all(0.2 < p < 0.9 for p in before), before  # room to move either way
    rl(
        root, tasks, "grpo-up", "--algo", "grpo", "--steps", "6", "--group", "8", "--lr", "3e-4",
        "--temperature", "0.8", "--kl-coef", "0", model=unsure_policy,
    )  # fmt: skip
    after = [answer_probability(root / "grpo-up", t) for t in trajectories]
    # the expected reward, not the sampled one (16 rollouts a step are too few to compare steps by)
    assert sum(after) / len(after) > sum(before) / len(before) + 0.1, (before, after)
    metrics = metrics_of(root / "grpo-up")
    assert len(metrics) == 6
    # the groups whose 8 samples all agreed were left out of the update (--skip-flat-groups, the default)
    for m in metrics:
        assert (m["flat_groups"] == 2) == (m["trained_tokens"] == 0)
    assert 0 < metrics[0]["reward_mean"] < 1  # the first groups disagreed: a signal to learn from


@pytest.mark.slow
def test_ppo_trains_a_value_head_and_a_killed_run_resumes(small_world):
    root, tasks = small_world
    first = rl(root, tasks, "ppo", "--algo", "ppo", "--steps", "2", "--save-every", "1")
    assert json.loads(first.stdout)["steps"] == 2
    assert (root / "ppo" / "value_head.pt").is_file()
    assert (root / "ppo" / "checkpoint-1" / "value_head.pt").is_file()
    # as if killed during step 2: the final model was never written, the step-1 checkpoint was
    (root / "ppo" / "trainer_state.json").unlink()
    second = rl(root, tasks, "ppo", "--algo", "ppo", "--steps", "2", "--resume")
    assert json.loads(second.stdout)["steps"] == 2
    metrics = metrics_of(root / "ppo")
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[-1]["value_loss"] >= 0 and "kl" in metrics[-1]


@pytest.mark.slow
def test_ppo_on_two_deepspeed_ranks_updates_as_one_process_does_and_resumes(small_world):
    """One rollout at a time, each from a seed of its own, so both runs sample the same rollouts; three
    sequences a minibatch, so one rank runs a zero-weight pass in each."""
    from safetensors.torch import load_file

    root, tasks = small_world
    same = ("--algo", "ppo", "--steps", "2", "--concurrency", "1", "--minibatch", "3", "--lr", "1e-4")
    rl(root, tasks, "one", *same)
    two = rl(root, tasks, "two", *same, "--nproc", "2", "--zero", "2", "--save-every", "1")
    assert json.loads(two.stdout)["steps"] == 2 and len(two.stdout.splitlines()) == 1  # one summary
    assert [m["reward_mean"] for m in metrics_of(root / "two")] == [
        m["reward_mean"] for m in metrics_of(root / "one")
    ]
    start, one = load_file(root / "sft" / "model.safetensors"), load_file(root / "one" / "model.safetensors")

    def differs(folder: Path) -> float:
        """How far a run's weights are from the one-process run's, relative to how far that one moved."""
        other = load_file(folder / "model.safetensors")
        moved = sum(float(((one[k] - start[k]) ** 2).sum()) for k in one) ** 0.5
        assert moved > 1e-3
        return sum(float(((one[k] - other[k]) ** 2).sum()) for k in one) ** 0.5 / moved

    assert differs(root / "two") < 1e-3
    # as if killed during step 2: the step-1 checkpoint holds DeepSpeed's state (optimizer moments
    # included); resuming redoes step 2 as the uninterrupted run did
    (root / "two" / "trainer_state.json").unlink()
    assert (root / "two" / "checkpoint-1" / "deepspeed").is_dir()
    resumed = rl(root, tasks, "two", *same, "--nproc", "2", "--zero", "2", "--resume")
    assert json.loads(resumed.stdout)["steps"] == 2
    assert [m["step"] for m in metrics_of(root / "two")] == [1, 2]
    assert differs(root / "two") < 1e-3
    # DeepSpeed's sharded state cannot be resumed by one plain process
    (root / "two" / "trainer_state.json").unlink()
    refused = subprocess.run(
        [*DR, "train", "rl", str(tasks), "--model", str(root / "sft"), "--index", str(root / "index"),
         "-o", str(root / "two"), "--algo", "ppo", "--steps", "2", "--resume"],
        capture_output=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2 and b"DeepSpeed on 2 ranks" in refused.stderr, refused.stderr[-2000:]


def test_rl_refuses_tasks_it_cannot_reward(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"question": "Why?", "type": "research"}) + "\n")
    result = subprocess.run(
        [*DR, "train", "rl", str(tasks), "--model", str(tmp_path), "-o", str(tmp_path / "out")],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2 and b"Hugging Face folder" in result.stderr


def test_resuming_a_run_saved_before_flat_groups_were_skipped_keeps_training_them(tmp_path):
    # such a checkpoint does not record skip_flat_groups; it trained on flat groups, so resuming it with
    # today's default (skip them) would change the run without a word
    from dr_core.errors import InputError
    from dr_train.checkpoint import check_settings
    from dr_train.config import RLConfig
    from dr_train.recipes.rl import UNRECORDED

    old = RLConfig(out=tmp_path).resume_keys()
    del old["skip_flat_groups"]
    with pytest.raises(InputError, match="skip_flat_groups False then, True now"):
        check_settings(tmp_path, old, RLConfig(out=tmp_path).resume_keys(), before=UNRECORDED)
    check_settings(
        tmp_path, old, RLConfig(out=tmp_path, skip_flat_groups=False).resume_keys(), before=UNRECORDED
    )
