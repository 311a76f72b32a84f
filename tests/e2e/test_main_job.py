"""The README's main job, end to end, in its short version: every stage runs for real and hands its output
to the next (world → index → oracle trajectories → sft data → mid-train → train sft → serve → bench → rl
→ bench)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def quick_main_job(out: Path, timeout: int) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "main_job.py"), "--out", str(out), "--quick"],
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
    scores, chains, pairs, _elo = table.split("\n\n")
    rows = [line for line in scores.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 5 and [r.split(" | ")[0].rsplit("/", 1)[-1] for r in rows[1:]] == [
        "untrained",
        "mid",
        "sft",
        "rl",
    ]
    # and where along each question's chain the runs stopped: a row per step, a column per model
    assert chains.splitlines()[0].startswith("| step of the chain |")
    assert chains.count(" of 4 |") >= 4 * 7
    # every two stages compared question by question, with a paired interval on the difference
    assert pairs.startswith("| A | B | n |") and len(pairs.splitlines()) == 2 + 6
    results = json.loads((out / "results.json").read_text())
    assert len(results["pairs"]) == 6 and all(len(p["diff_ci95"]) == 2 for p in results["pairs"])
    assert list(results["runs"]) == ["untrained", "mid", "sft", "rl"]
    assert [h["n"] for h in results["hops"]] == [4, 4, 4, 4]
    for summary in results["runs"].values():
        assert summary["n"] == 4 and 0.0 <= summary["score"]["mean"] <= 1.0
    for model in ("base", "mid", "sft", "rl"):
        assert (out / "models" / model / "model.safetensors").is_file()
    rl = [json.loads(line) for line in (out / "models" / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert rl and {"reward_mean", "reward_std", "tool_calls", "response_tokens", "flat_groups"} <= set(rl[-1])
    # the KL is measured by an update; a step whose groups were all flat (one reward each) has none
    assert "kl" in rl[-1] or rl[-1]["trained_tokens"] == 0
    sft = [json.loads(line) for line in (out / "models" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert sft[-1]["loss"] < sft[0]["loss"]
    # a second run finds every output in place and only prints the table again
    again = quick_main_job(out, timeout=600)
    assert again.returncode == 0 and again.stdout.decode() == table
    assert b"$ dr train" not in again.stderr
    # a bench run with other settings (an older main job's token budget) is set aside, not trusted
    record = out / "bench" / "untrained" / "main_job.json"
    settings = json.loads(record.read_text())
    flags = settings["flags"]
    older = [*flags[: flags.index("--max-tokens") + 1], "1000", *flags[flags.index("--max-tokens") + 2 :]]
    record.write_text(json.dumps({**settings, "flags": older}))
    third = quick_main_job(out, timeout=600)
    assert third.returncode == 0, third.stderr.decode()[-4000:]
    benches = [line for line in third.stderr.decode().splitlines() if line.startswith("$ dr bench run")]
    assert len(benches) == 1 and "bench/untrained " in benches[0]
    stale = out / "bench" / "untrained.stale-1"
    assert json.loads((stale / "main_job.json").read_text())["flags"] == older != flags
    assert (stale / "summary.json").is_file() and json.loads(record.read_text()) == settings
