"""Pairwise win/tie/loss and Bradley-Terry/Elo on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from dr_bench.rating import bradley_terry, elo, paired_difference, pairwise, ratings


def test_win_tie_loss_and_win_rate():
    a = {"t1": 0.9, "t2": 0.5, "t3": 0.30, "t4": 0.7, "only-a": 1.0}
    b = {"t1": 0.2, "t2": 0.51, "t3": 0.60, "t4": 0.1}
    # t1 win, t2 tie (within 0.02), t3 loss, t4 win: (2 + 0.5) / 4
    assert pairwise(a, b) == {"n": 4, "win": 2, "tie": 1, "loss": 1, "win_rate": 0.625}


def test_bradley_terry_recovers_a_known_ratio():
    # i beats j 30.5 of 41 games with the prior of half a win each way: p_i / p_j = 30.5 / 10.5
    p = bradley_terry(np.array([[0.0, 30.0], [10.0, 0.0]]))
    assert p[0] / p[1] == pytest.approx(30.5 / 10.5, rel=1e-6)
    ratings_ = elo(p)
    assert ratings_.mean() == pytest.approx(1000.0)
    assert ratings_[0] - ratings_[1] == pytest.approx(400 * np.log10(p[0] / p[1]))


def test_ratings_order_systems_and_give_intervals():
    tasks = [f"t{i}" for i in range(30)]
    strong = {t: 0.9 for t in tasks}
    medium = {t: 0.5 + (0.3 if i % 3 == 0 else 0) for i, t in enumerate(tasks)}
    weak = {t: 0.1 for t in tasks}
    rated = ratings([weak, strong, medium], resamples=200)
    assert rated[1]["elo"] > rated[2]["elo"] > rated[0]["elo"]
    for r in rated:
        assert r["ci95"][0] <= r["elo"] <= r["ci95"][1]
    twins = ratings([strong, dict(strong)], resamples=50)
    assert twins[0]["elo"] == pytest.approx(twins[1]["elo"])


def test_a_difference_equal_to_the_margin_is_a_tie():
    from dr_bench.rating import outcome

    assert outcome(0.72, 0.70) == 0.5  # 0.72 - 0.70 is 0.020000000000000018 in binary
    assert outcome(0.70, 0.72) == 0.5
    assert outcome(0.7201, 0.70) == 1.0


def test_a_system_that_shares_no_task_has_no_rating():
    a = {f"t{i}": 0.9 for i in range(10)}
    b = {f"t{i}": 0.1 for i in range(10)}
    alone = {"other": 0.5}
    rated = ratings([a, b, alone], resamples=50)
    assert rated[2] == {"elo": None, "ci95": None, "games": 0}
    assert rated[0]["games"] == rated[1]["games"] == 10 and rated[0]["elo"] > rated[1]["elo"]


def test_paired_difference_sees_a_small_steady_gain_that_two_separate_intervals_miss():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 0.9, size=200)  # questions differ a lot in difficulty
    a = {f"t{i}": float(x) + 0.05 for i, x in enumerate(base)}
    b = {f"t{i}": float(x) for i, x in enumerate(base)}
    b["t0"] += 0.2  # and not every question moves the same way
    out = paired_difference(a, b, resamples=500)
    assert out["diff"] == pytest.approx(0.05 - 0.2 / 200)
    low, high = out["diff_ci95"]
    assert 0 < low < out["diff"] < high < 0.06  # the paired interval excludes 0
    # each system's own mean varies far more than 0.05 over the questions drawn
    assert np.std(list(b.values())) / np.sqrt(200) > 0.015
    assert paired_difference(a, {"other": 1.0}) == {"diff": None, "diff_ci95": None}
    # the same seed gives the same interval
    assert paired_difference(a, b, resamples=500) == out
