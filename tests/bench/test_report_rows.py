"""Bench rows for report tasks (flaw and fatal rates with intervals, citation precision), and the reward
curves of RL runs (the judge's reward beside the truth, per step)."""

from __future__ import annotations

import json
import random

from dr_bench.report import markdown, summarize
from dr_bench.runner import _judge
from dr_core.records import Message, Trajectory
from dr_data.judge_data import oracle_report, perturb
from dr_data.report_tasks import sample_report_tasks
from dr_data.world import build_world
from dr_judge.judge import ChecklistJudge
from support.cli import dr


def test_report_rows_count_flaws_fatal_flaws_and_citations_outside_the_task(tmp_path):
    task = next(iter(sample_report_tasks(build_world(seed=2, n_entities=400), 1, test_share=0.2)))
    texts = [
        oracle_report(task),
        oracle_report(task),
        perturb(task, "swap_entity", random.Random(0)) or perturb(task, "change_number", random.Random(0)),
        perturb(task, "fabricate_citation", random.Random(0)),
    ]
    rules = ChecklistJudge(None)
    lines = []
    for n, text in enumerate(texts):
        trajectory = Trajectory(id=f"t{n}", task_id=task.id, messages=[Message(role="user", content="q")],
                                final=text)  # fmt: skip
        lines.append(_judge(rules, task, trajectory).model_dump_json())
    (tmp_path / "judgments.jsonl").write_text("\n".join(lines) + "\n")
    summary = summarize(tmp_path)
    reports = summary["reports"]
    assert reports["n"] == 4
    assert reports["flaw_rate"]["mean"] == 0.25 and reports["fatal_rate"]["mean"] == 0.25
    low, high = reports["fatal_rate"]["ci95"]
    assert low <= 0.25 <= high and high > low
    # the fabricated citation is the one source of the four reports outside the task's articles
    precision = reports["citation_precision"]
    assert precision["n"] == 4 and 0.9 < precision["mean"] < 1.0
    table = markdown([summary])
    assert "| flaw rate (95% CI) |" in table and "0.250 (" in table


def test_reward_curves_of_rl_runs_as_a_table_and_a_plot(tmp_path):
    run = tmp_path / "rl"
    run.mkdir()
    steps = [
        {"step": 1, "reward_mean": 0.5, "reward_judge": 0.6, "reward_true": 0.5, "reward_gap": 0.1, "x": 1},
        {"step": 2, "reward_mean": 0.7, "reward_judge": 0.8, "reward_true": 0.55, "reward_gap": 0.25},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    result = dr("bench", "rewards", run, "--markdown", tmp_path / "r.md", "--plot", tmp_path / "r.png")
    assert result.returncode == 0, result.stderr.decode()
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["reward_gap"] for r in rows] == [0.1, 0.25] and "x" not in rows[0]
    table = (tmp_path / "r.md").read_text()
    assert "reward_judge" in table and "| 0.25 |" in table and "fatal_rate" not in table
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    (run / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    bad = dr("bench", "rewards", run)
    assert bad.returncode == 2 and b"metrics.jsonl:2" in bad.stderr and b"Traceback" not in bad.stderr
