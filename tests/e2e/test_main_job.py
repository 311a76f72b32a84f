"""The README's main job, end to end, in its short version: every stage runs for real and hands its output
to the next (world → index → oracle trajectories → sft data → mid-train → train sft → serve → bench → rl
→ bench)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def quick_main_job(out: Path, timeout: int) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "main_job.sh"), "--out", str(out), "--quick"],
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "DR_QUIET": "1"},
    )


@pytest.mark.slow
def test_the_quick_main_job_runs_every_stage_and_prints_the_table(tmp_path):
    out = tmp_path / "main"
    result = quick_main_job(out, timeout=1500)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    table = result.stdout.decode()
    sections = table.split("\n\n")
    scores = sections[0]
    rows = [line for line in scores.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0].rsplit("/", 1)[-1] for r in rows[1:]] == [
        "untrained",
        "mid",
        "sft",
        "rl",
        "reports-sft",
        "reports-rl",
    ]
    # the report track: the true checklist score's rows with flaw and fatal rates and citation precision
    [reports] = [s for s in sections if "| flaw rate (95% CI) |" in s]
    assert [line.split(" | ")[0].rsplit("/", 1)[-1] for line in reports.splitlines()[2:]] == [
        "reports-sft",
        "reports-rl",
    ]
    # and where along each question's chain the runs stopped: a row per step, a column per model
    [chains] = [s for s in sections if s.startswith("| step of the chain |")]
    assert chains.count(" of 4 |") >= 4 * 7
    # every two stages compared question by question (and report task by report task), with a paired
    # interval on the difference
    pairs, report_pairs = [s for s in sections if s.startswith("| A | B | n |")]
    assert len(pairs.splitlines()) == 2 + 6 and len(report_pairs.splitlines()) == 2 + 1
    # the RL run's rewards per step beside the rules' truth
    [curve] = [s for s in sections if s.startswith("| run | step |")]
    assert "reward_mean" in curve and (out / "rewards.png").is_file()
    # the tables' figures, one file per command
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [Path(r["run"]).name for r in runs] == [
        "untrained",
        "mid",
        "sft",
        "rl",
        "reports-sft",
        "reports-rl",
    ]
    pairs = json.loads((out / "compare.json").read_text())["pairs"]
    assert len(pairs) == 6 and all(len(p["diff_ci95"]) == 2 for p in pairs)
    assert len(json.loads((out / "compare-reports.json").read_text())["pairs"]) == 1
    hops = [json.loads(line) for line in (out / "hops.jsonl").read_text().splitlines()]
    assert [h["n"] for h in hops] == [4, 4, 4, 4]
    for summary in runs:
        assert summary["n"] == 4 and 0.0 <= summary["score"]["mean"] <= 1.0
    for summary in runs[4:]:
        assert summary["reports"]["n"] == 4
    # the oracle wrote report trajectories, and SFT learnt from them beside the questions'
    taught = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert any("report" in t["task_id"] for t in taught) and any("report" not in t["task_id"] for t in taught)
    for model in ("base", "mid", "sft", "rl"):
        assert (out / "models" / model / "model.safetensors").is_file()
    rl = [json.loads(line) for line in (out / "models" / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert rl and {"reward_mean", "reward_std", "tool_calls", "response_tokens", "flat_groups"} <= set(rl[-1])
    # the KL is measured by an update; a step whose groups were all flat (one reward each) has none
    assert "kl" in rl[-1] or rl[-1]["trained_tokens"] == 0
    # a step that drew report tasks scored them by the rules (--judge rules in a quick run)
    for step in rl:
        assert "reward_judge" not in step and ("reports" not in step or "reward_true" in step)
    sft = [json.loads(line) for line in (out / "models" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert sft[-1]["loss"] < sft[0]["loss"]
    # a second run finds every output in place: every command leaves its finished run alone, and the table
    # is printed again
    trained = {
        m: (out / "models" / m / "model.safetensors").stat().st_mtime_ns for m in ("base", "mid", "sft", "rl")
    }
    served = {log: log.stat().st_mtime_ns for log in (out / "bench").glob("*/serve.log")}
    assert len(served) == 6
    again = quick_main_job(out, timeout=600)
    assert again.returncode == 0 and again.stdout.decode() == table, again.stderr.decode()[-4000:]
    assert {m: (out / "models" / m / "model.safetensors").stat().st_mtime_ns for m in trained} == trained
    benches = [line for line in again.stderr.decode().splitlines() if line.startswith("$ dr bench run")]
    # each bench found its finished run and started no server
    assert len(benches) == 6 and {log: log.stat().st_mtime_ns for log in served} == served
    assert b"$ dr data world" not in again.stderr
    # a bench run with other settings (an older main job's token budget) is set aside, not trusted
    setup_path = out / "bench" / "untrained" / "setup.json"
    setup = json.loads(setup_path.read_text())
    fingerprint = setup["fingerprint"]
    older = {
        **fingerprint,
        "agent_settings": {**fingerprint["agent_settings"], "max_tokens": 1000},
        "digest": "older",
    }
    setup_path.write_text(json.dumps({**setup, "fingerprint": older}))
    third = quick_main_job(out, timeout=600)
    assert third.returncode == 0, third.stderr.decode()[-4000:]
    assert b"bench/untrained.stale-1" in third.stderr
    # only that bench ran again (a server of its own, logged in the new folder)
    assert [log.parent.name for log in served if log.stat().st_mtime_ns != served[log]] == ["untrained"]
    stale = out / "bench" / "untrained.stale-1"
    assert (
        json.loads((stale / "setup.json").read_text())["fingerprint"]["agent_settings"]["max_tokens"] == 1000
    )
    assert (stale / "summary.json").is_file() and json.loads(setup_path.read_text()) == setup
