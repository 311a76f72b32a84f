"""The one prepared GPU check, run as CI runs it: the same script on the CPU with tiny shapes, so a wiring
mistake shows before a GPU is ever lent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_check_runs_every_step_on_the_cpu_and_writes_one_table(tmp_path):
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu-smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bench_kernels.json",
        "bench_train.json",
        "gpu_check.json",
        "gpu_check.log",
        "gpu_check.md",
    ]  # fmt: skip  (at most 8 files come back from a GPU machine)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failed"] == [] and report["skipped"] == []
    assert {c["case"]["op"] for c in report["bench_kernels"]} == {"linear_ce", "rms_norm", "rope", "swiglu"}
    assert all("ms" in c["results"]["dr"] for c in report["bench_kernels"])
    assert all("tokens_per_s" in r["results"]["dr"] for r in report["bench_train"])
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.startswith("GPU check: commit ") and "| kernel tests (cpu) |" in table
    assert "| SFT + RL smoke (cpu) | tiny model, 2 tasks | | | ran |" in table
    # progress is timestamped
    assert "] smoke_rl_4_rl: exit 0" in result.stdout


@pytest.mark.slow
def test_a_step_that_would_run_past_the_budget_is_skipped_and_named(tmp_path):
    result = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "gpu_check.sh"),
            "--cpu-smoke",
            "--out",
            str(tmp_path),
            "--budget-s",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "smoke_rl" in report["skipped"]
    assert "| smoke_rl | skipped: over the time budget |" in (tmp_path / "gpu_check.md").read_text()
    assert "smoke_rl: SKIPPED" in result.stdout
