"""Comparing systems task by task: win / tie / loss (win rate = (win + 0.5 tie) / n, as ADR-Bench reports
it), and Bradley-Terry strengths on the Elo scale across several systems, with bootstrap intervals."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

# Scores closer than this count as a tie: judge scores are not more precise than that.
TIE_MARGIN = 0.02
ELO_BASE = 1000.0
ELO_SCALE = 400.0


def outcome(a: float, b: float, margin: float = TIE_MARGIN) -> float:
    """1 if a wins, 0 if b wins, 0.5 for a tie."""
    # rounded, so that a difference equal to the margin in decimal (0.72 - 0.70) is a tie in binary too
    if round(abs(a - b), 9) <= margin:
        return 0.5
    return 1.0 if a > b else 0.0


def pairwise(a: dict[str, float], b: dict[str, float], margin: float = TIE_MARGIN) -> dict[str, Any]:
    """Win / tie / loss of system a against b over the tasks both have a score for."""
    shared = sorted(set(a) & set(b))
    results = [outcome(a[t], b[t], margin) for t in shared]
    wins, ties = results.count(1.0), results.count(0.5)
    losses = len(results) - wins - ties
    rate = (wins + 0.5 * ties) / len(results) if results else float("nan")
    return {"n": len(results), "win": wins, "tie": ties, "loss": losses, "win_rate": rate}


def paired_difference(
    a: dict[str, float], b: dict[str, float], resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Mean per-task score of a minus b over the tasks both have, with a 95% paired bootstrap interval:
    the tasks are resampled with replacement, each keeping its two scores, so the interval is that of the
    difference the same questions show, not of two independent means. An interval that excludes 0 says a
    and b differ beyond the noise of which questions were drawn."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return {"diff": None, "diff_ci95": None}
    d = np.array([a[t] - b[t] for t in shared], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"diff": float(d.mean()), "diff_ci95": [float(low), float(high)]}


def bradley_terry(wins: np.ndarray, iterations: int = 10000, tol: float = 1e-9) -> np.ndarray:
    """Strengths p (sum 1) maximizing the Bradley-Terry likelihood, by Hunter's MM algorithm.
    wins[i, j] is how often i beat j (ties count half to each). A prior of half a win each way between
    every pair keeps a system that never wins or never loses at a finite strength (and the iteration
    converging quickly)."""
    k = wins.shape[0]
    w = wins + 0.5 * (1 - np.eye(k))
    games = w + w.T  # zero on the diagonal
    p = np.full(k, 1.0 / k)
    for _ in range(iterations):
        denominator = (games / (p[:, None] + p[None, :])).sum(axis=1)
        updated = w.sum(axis=1) / denominator
        updated /= updated.sum()
        if np.abs(updated - p).max() < tol:
            return updated
        p = updated
    return p


def elo(strengths: np.ndarray) -> np.ndarray:
    """Bradley-Terry strengths on the Elo scale, centred on 1000."""
    logs = np.log10(strengths)
    return ELO_BASE + ELO_SCALE * (logs - logs.mean())


def win_matrix(scores: list[dict[str, float]], tasks: list[str], margin: float) -> np.ndarray:
    k = len(scores)
    wins = np.zeros((k, k))
    for i, j in itertools.combinations(range(k), 2):
        for t in tasks:
            if t in scores[i] and t in scores[j]:
                result = outcome(scores[i][t], scores[j][t], margin)
                wins[i, j] += result
                wins[j, i] += 1 - result
    return wins


def ratings(
    scores: list[dict[str, float]], margin: float = TIE_MARGIN, resamples: int = 1000, seed: int = 0
) -> list[dict[str, Any]]:
    """Elo rating of each system with a 95% interval from resampling tasks, and `games`: how many task-by-
    task comparisons with the other systems it rests on. A system that shares no task with any other has
    no rating (elo and ci95 are None): the prior alone would put it at exactly 1000 with a zero-width
    interval, which looks certain and rests on nothing."""
    tasks = sorted(set().union(*scores))
    wins = win_matrix(scores, tasks, margin)
    games = (wins + wins.T).sum(axis=1)
    point = elo(bradley_terry(wins))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        sample = [tasks[i] for i in rng.integers(0, len(tasks), len(tasks))]
        draws.append(elo(bradley_terry(win_matrix(scores, sample, margin))))
    low, high = np.percentile(np.array(draws), [2.5, 97.5], axis=0)
    return [
        {"elo": float(point[i]), "ci95": [float(low[i]), float(high[i])], "games": int(games[i])}
        if games[i] > 0 and not math.isnan(point[i])
        else {"elo": None, "ci95": None, "games": int(games[i])}
        for i in range(len(scores))
    ]
