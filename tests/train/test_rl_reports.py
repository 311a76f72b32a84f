"""dr train rl on report tasks, rewarded by a judge model on loopback, with the rules' truth beside it.

A tiny model learns by heart the oracle's trajectories of one question and one report task, so that its
rollouts research and write a cited report. The judge is a scripted server: one that finds every report
perfect (the gap to the truth must show in metrics.jsonl), one that abstains (every rollout is dropped,
none scored 0), one that dies after the first checkpoint (exit 3 naming its URL, the checkpoint intact).
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from dr_core.records import Task
from dr_data.judge_data import perturb
from dr_judge.judge import judge_reply
from support.cli import dr
from support.openai_server import Reply, scripted_server


def ok(*args, timeout=900):
    result = dr(*args, timeout=timeout)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    return result


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl-reports")
    ok("data", "world", "-o", root / "world", "--entities", "40", "--tasks", "24", "--report-tasks", "8",
       "--max-hops", "1", "--seed", "3")  # fmt: skip
    ok("data", "index", root / "world" / "corpus.jsonl", "-i", root / "index")
    question = (root / "world" / "train.jsonl").read_text().splitlines(keepends=True)[0]
    report = (root / "world" / "reports-train.jsonl").read_text().splitlines(keepends=True)[0]
    tasks = root / "tasks.jsonl"
    tasks.write_text(question + report)
    ok("data", "trajectories", tasks, "--index", root / "index", "-o", root / "traj.jsonl")
    # the report the model learns gets a fact wrong (a citation of an unopened article would not do: the
    # agent sends such an answer back)
    trajectories = [json.loads(line) for line in (root / "traj.jsonl").read_text().splitlines()]
    task = Task.model_validate_json(report)
    flawed = perturb(task, "swap_entity", random.Random(0)) or perturb(
        task, "change_number", random.Random(0)
    )
    assert flawed is not None
    for trajectory in trajectories:
        if trajectory["task_id"] == task.id:
            trajectory["final"] = flawed
            call = [m for m in trajectory["messages"] if m["role"] == "assistant"][-1]["tool_calls"][-1]
            assert call["name"] == "answer"
            call["arguments"]["text"] = flawed
    (root / "traj8.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trajectories) * 8)
    ok("train", "sft", root / "traj8.jsonl", "--model", "tiny:qwen2", "-o", root / "sft", "--max-len", "8192",
       "--max-steps", "300", "--lr", "3e-3", "--warmup", "5", "--vocab-size", "1024", "--no-grad-ckpt")  # fmt: skip
    return root, tasks, flawed


def rl(root: Path, tasks: Path, out: str, url: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return dr(
        "train", "rl", tasks, "--model", root / "sft", "--index", root / "index", "-o", root / out,
        "--tasks-per-step", "2", "--group", "2", "--max-steps", "12", "--max-tokens", "12000",
        "--max-output-tokens", "256", "--concurrency", "2", "--temperature", "0.7", "--lr", "1e-5",
        "--engine", "hf", "--judge-base-url", url, "--judge-model", "judge", *extra, timeout=900,
    )  # fmt: skip


def metrics_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def flatterer(body):
    """Every requirement met, no flaw: whatever the report says."""
    user = body["messages"][-1]["content"]
    items = [part.split("]", 1) for part in user.split("\n- [")[1:]]
    return Reply(
        content=judge_reply([(i, "met" if "(requirement)" in r else "not_met", "ok") for i, r in items])
    )


@pytest.mark.slow
def test_report_rl_logs_the_judges_reward_beside_the_truth(taught):
    root, tasks, _ = taught
    with scripted_server(flatterer) as srv:
        result = rl(root, tasks, "flattered", srv.url, "--steps", "2")
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    metrics = metrics_of(root / "flattered")
    assert [m["step"] for m in metrics] == [1, 2]
    asked = 0
    for m in metrics:
        assert m["reports"] == 2 and m["dropped"] == 0 and m["judge_s"] > 0
        assert {"reward_true", "flaw_rate", "fatal_rate", "report_words", "citations"} <= set(m)
        assert 0 <= m["reward_questions"] <= 1
        # the judge gives the learnt report full marks; the rules, which the policy never sees, find its
        # wrong fact
        assert m["reward_judge"] == 1.0 and m["flaw_rate"] == 1.0 and m["fatal_rate"] == 0.0
        assert 0.0 <= m["reward_true"] < 1.0 and m["reward_gap"] == round(1.0 - m["reward_true"], 4)
        assert m["citations"] >= 2 and m["report_words"] > 10
        asked += m["reports"]
    # one call per report written (the question tasks' answers never go to the judge)
    assert 0 < len(srv.requests) <= asked
    assert all("# Checklist" in r["messages"][-1]["content"] for r in srv.requests)


@pytest.mark.slow
def test_rollouts_the_judge_abstains_on_are_dropped_not_scored_zero(taught):
    root, tasks, _ = taught
    cut = Reply(content='{"verdicts":[{"id":"fact1","verd', finish_reason="length")
    with scripted_server([cut]) as srv:
        result = rl(root, tasks, "abstained", srv.url, "--steps", "1")
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    [m] = metrics_of(root / "abstained")
    written = len(srv.requests)
    assert written > 0 and m["dropped"] == written
    assert "reward_judge" not in m and m["reports"] == 2 and m["flaw_rate"] == 1.0  # the truth is known
    # the reward is the question group's alone: the dropped reports do not count as 0
    assert m["rollouts"] == 4 and m["reward_mean"] == m["reward_questions"]
    # with only the report task, no rollout has a reward: none is trained on, and the step says so
    reports_only = root / "reports-only.jsonl"
    reports_only.write_text(tasks.read_text().splitlines(keepends=True)[1])
    with scripted_server([cut]) as srv:
        result = rl(root, reports_only, "abstained-all", srv.url, "--steps", "1")
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr[-4000:]
    [m] = metrics_of(root / "abstained-all")
    assert m["reward_mean"] is None and m["dropped"] == 2 and m["trained_tokens"] == 0
    assert "judge abstained on every rollout" in stderr and "Logging error" not in stderr


@pytest.mark.slow
def test_a_judge_that_dies_mid_run_exits_3_naming_it_and_the_checkpoint_stays(taught):
    root, tasks, _ = taught
    out = root / "died"

    def dies_after_the_first_checkpoint(body):
        if (out / "checkpoint-1" / "trainer_state.json").exists():
            return Reply(status=503, error_body='{"error": {"message": "engine dead"}}')
        return flatterer(body)

    with scripted_server(dies_after_the_first_checkpoint) as srv:
        result = rl(root, tasks, "died", srv.url, "--steps", "3", "--save-every", "1")
        url = srv.url
    stderr = result.stderr.decode()
    assert result.returncode == 3, stderr[-4000:]
    assert url in stderr and "Traceback" not in stderr
    assert (out / "checkpoint-1" / "model.safetensors").is_file()
    assert not (out / "trainer_state.json").exists()  # no final model was written
    assert [m["step"] for m in metrics_of(out)] == [1]
