"""Agreement statistics against known values, and `dr judge agree` on the DeepResearch Bench scores."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import dr_judge.stats as stats


def test_cohen_kappa_of_the_textbook_table():
    # 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no: p_o = 0.7, p_e = 0.5, kappa = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert stats.cohen_kappa(a, b) == pytest.approx(0.4)
    assert stats.cohen_kappa(["met"] * 4, ["met"] * 4) == 1.0
    assert stats.cohen_kappa(["a", "b", "a", "b"], ["b", "a", "b", "a"]) == pytest.approx(-1.0)


def test_pearson_and_spearman_with_ties():
    assert stats.pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]) == pytest.approx(6 / math.sqrt(60))
    assert list(stats.ranks([5, 6, 7, 8, 7])) == [1, 2, 3.5, 5, 3.5]
    assert stats.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert stats.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_bootstrap_intervals_bracket_the_estimate_and_are_reproducible():
    values = [0.1, 0.4, 0.35, 0.8, 0.6, 0.55, 0.2, 0.9]
    mean, low, high = stats.mean_ci(values, seed=1)
    assert mean == pytest.approx(sum(values) / len(values))
    assert low < mean < high and (low, high) == stats.mean_ci(values, seed=1)[1:]
    assert stats.mean_ci([0.5] * 5) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError):
        stats.bootstrap_ci(stats.pearson, [1, 2], [1])


def test_bootstrap_counts_the_resamples_on_which_the_statistic_is_undefined():
    # three points, two alike: a resample that draws only equal x values has no correlation
    x, y = [1.0, 1.0, 2.0], [0.0, 1.0, 2.0]
    interval = stats.bootstrap_ci(stats.spearman, x, y, resamples=500, seed=0)
    draws = np.random.default_rng(0).integers(0, 3, (500, 3))
    constant = sum(len({x[i] for i in pick}) == 1 or len({y[i] for i in pick}) == 1 for pick in draws)
    assert interval.undefined == constant > 0
    assert stats.bootstrap_ci(lambda v: float(np.mean(v)), [0.5, 0.7], resamples=50).undefined == 0


def test_agree_against_the_deepresearch_bench_scores(tmp_path):
    from conftest import DRB

    scores = [
        json.loads(line) for line in (DRB / "race_scores_claude-3-7-sonnet.jsonl").read_text().splitlines()
    ]
    # stand-in predictions: a judge that only looked at comprehensiveness, as Judgments keyed by task
    preds = tmp_path / "judgments.jsonl"
    preds.write_text(
        "".join(
            json.dumps(
                {"task_id": str(s["id"]), "target_id": str(s["id"]), "score": s["comprehensiveness"] / 100}
            )
            + "\n"
            for s in scores
        )
    )
    cmd = [sys.executable, "-m", "dr_cli.main", "judge", "agree", str(preds)]
    cmd += [
        str(DRB / "race_scores_claude-3-7-sonnet.jsonl"),
        "--label-field",
        "overall_score",
        "--resamples",
        "500",
    ]
    result = subprocess.run(cmd, capture_output=True)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["n"] == len(scores) == 80
    x = [s["comprehensiveness"] for s in scores]
    y = [s["overall_score"] for s in scores]
    assert out["spearman"]["value"] == pytest.approx(stats.spearman(x, y))
    assert out["pearson"]["value"] == pytest.approx(stats.pearson(x, y))
    low, high = out["pearson"]["ci95"]
    assert low < out["pearson"]["value"] < high
    assert b"judge agreement over 80 responses" in result.stderr


def test_agree_reports_kappa_over_item_verdicts(tmp_path):
    def judgment(key, score, verdicts):
        items = [{"item_id": f"c{i}", "verdict": v} for i, v in enumerate(verdicts)]
        return json.dumps({"task_id": key, "target_id": key, "score": score, "verdicts": items}) + "\n"

    preds = tmp_path / "p.jsonl"
    labels = tmp_path / "l.jsonl"
    preds.write_text(
        "".join(
            judgment(k, s, v)
            for k, s, v in [
                ("a", 0.2, ["met", "not_met"]),
                ("b", 0.5, ["met", "met"]),
                ("c", 0.9, ["not_met", "met"]),
            ]
        )
    )
    labels.write_text(
        "".join(
            judgment(k, s, v)
            for k, s, v in [
                ("a", 0.1, ["met", "not_met"]),
                ("b", 0.6, ["met", "met"]),
                ("c", 0.8, ["met", "met"]),
            ]
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "dr_cli.main",
        "judge",
        "agree",
        str(preds),
        str(labels),
        "--label-key",
        "task_id",
    ]
    out = json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout)
    assert out["verdicts"]["items"] == 6 and out["verdicts"]["accuracy"]["value"] == pytest.approx(5 / 6)
    assert out["verdicts"]["kappa"]["value"] == pytest.approx(
        stats.cohen_kappa(
            ["met", "not_met", "met", "met", "not_met", "met"], ["met", "not_met", "met", "met", "met", "met"]
        )
    )
    assert out["spearman"]["value"] == pytest.approx(1.0)
