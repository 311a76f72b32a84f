"""`dr bench report` and `dr bench compare` on hand-made judgments."""

from __future__ import annotations

import json
import subprocess

import pytest

from support.cli import DR


def write_run(folder, scores, category="c", tokens=100):
    folder.mkdir(parents=True)
    lines = []
    for i, value in enumerate(scores):
        meta = {
            "category": category if i % 2 == 0 else "other",
            "tool_calls": 3,
            "tokens": tokens,
            "wall_s": 2.0,
            "cost_usd": 0.01,
            "steps": 4,
            "stop_reason": "answered",
        }
        lines.append(json.dumps({"task_id": f"t{i}", "target_id": f"x{i}", "score": value, "meta": meta}))
    (folder / "judgments.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_report_gives_means_intervals_categories_markdown_and_a_plot(tmp_path):
    run = write_run(tmp_path / "sft", [1.0, 0.0, 1.0, 1.0])
    result = subprocess.run(
        [
            *DR,
            "bench",
            "report",
            str(run),
            "--markdown",
            str(tmp_path / "r.md"),
            "--plot",
            str(tmp_path / "r.png"),
        ],
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n"] == 4 and summary["score"]["mean"] == 0.75
    low, high = summary["score"]["ci95"]
    assert 0.0 <= low <= 0.75 <= high <= 1.0
    assert summary["categories"] == {"c": {"n": 2, "mean": 1.0}, "other": {"n": 2, "mean": 0.5}}
    assert summary["tool_calls"]["mean"] == 3 and summary["cost_usd"]["total"] == 0.04
    assert f"| {run} | 4 | 0.750 (" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_counts_wins_ties_losses_and_rates_systems(tmp_path):
    a = write_run(tmp_path / "a", [0.9, 0.5, 0.3, 0.8])
    b = write_run(tmp_path / "b", [0.2, 0.51, 0.6, 0.1])
    result = subprocess.run(
        [
            *DR,
            "bench",
            "compare",
            str(a),
            str(b),
            "--resamples",
            "100",
            "--markdown",
            str(tmp_path / "c.md"),
            "--plot",
            str(tmp_path / "elo.png"),
        ],
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    (pair,) = out["pairs"]
    low, high = pair.pop("diff_ci95")
    assert pair == {
        "a": str(a), "b": str(b), "n": 4, "win": 2, "tie": 1, "loss": 1, "win_rate": 0.625,
        "diff": pytest.approx(0.2725),
    }  # fmt: skip
    assert -0.3 <= low < 0.2725 < high <= 0.7 + 1e-9
    elo = {r["run"]: r["elo"] for r in out["ratings"]}
    assert elo[str(a)] > elo[str(b)]
    assert "| 4 | 2 | 1 | 1 | 0.625 | +0.273 (" in (tmp_path / "c.md").read_text()
    assert (tmp_path / "elo.png").read_bytes()[:4] == b"\x89PNG"
    assert subprocess.run([*DR, "bench", "compare", str(a)], capture_output=True).returncode == 2


def test_report_on_a_folder_without_judgments_is_a_clear_error(tmp_path):
    result = subprocess.run([*DR, "bench", "report", str(tmp_path)], capture_output=True)
    assert result.returncode == 2 and b"no judgments.jsonl" in result.stderr


def test_report_counts_runs_that_made_no_progress_apart_from_budget_stops(tmp_path):
    run = write_run(tmp_path / "r", [1.0, 0.0, 0.0, 0.0])
    lines = [json.loads(line) for line in (run / "judgments.jsonl").read_text().splitlines()]
    for line, reason in zip(lines, ["answered", "no_progress", "no_progress", "step_budget"], strict=True):
        line["meta"]["stop_reason"] = reason
    (run / "judgments.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = subprocess.run(
        [*DR, "bench", "report", str(run), "--markdown", str(tmp_path / "r.md")], capture_output=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stop_reasons"] == {"answered": 1, "no_progress": 2, "step_budget": 1}
    assert "| no_progress 2, answered 1, step_budget 1 |" in (tmp_path / "r.md").read_text()
