"""Agreement and uncertainty statistics: Cohen's kappa, Spearman and Pearson correlation, bootstrap
percentile intervals. Plain numpy, seeded, so reports are reproducible."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Chance-corrected agreement of two labelings of the same items (1 perfect, 0 chance level)."""
    if len(a) != len(b) or not a:
        raise ValueError("kappa needs two labelings of the same, non-empty set of items")
    labels = sorted(set(a) | set(b))
    index = {label: i for i, label in enumerate(labels)}
    table = np.zeros((len(labels), len(labels)))
    for x, y in zip(a, b, strict=True):
        table[index[x], index[y]] += 1
    return kappa_of_table(table)


def kappa_of_table(table: np.ndarray) -> float:
    """Cohen's kappa of a confusion table (rater A's labels by row, rater B's by column); NaN when empty."""
    n = table.sum()
    if n == 0:
        return float("nan")
    observed = np.trace(table) / n
    expected = float((table.sum(axis=1) * table.sum(axis=0)).sum()) / n**2
    if expected == 1.0:
        return 1.0  # both raters used one and the same label throughout
    return float((observed - expected) / (1 - expected))


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("correlation needs two equally long series of at least 2 values")
    xs, ys = xs - xs.mean(), ys - ys.mean()
    denominator = np.sqrt((xs**2).sum() * (ys**2).sum())
    return float((xs * ys).sum() / denominator) if denominator else float("nan")


def ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    array = np.asarray(values, dtype=float)
    order = np.argsort(array, kind="mergesort")
    result = np.empty(len(array))
    sorted_values = array[order]
    start = 0
    while start < len(array):
        end = start
        while end + 1 < len(array) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        result[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(ranks(x), ranks(y))


class Interval(NamedTuple):
    estimate: float
    low: float
    high: float
    undefined: int  # resamples on which the statistic was undefined (NaN), left out of the interval


def bootstrap_ci(
    statistic: Callable[..., float],
    *samples: Sequence[float] | Sequence[str],
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """The statistic on the data and the percentile interval over resamples of the paired observations
    (the same indices drawn for every sample). Resamples on which the statistic is undefined (a
    correlation of a resample whose values are all equal) are left out and counted in `undefined`; when
    every one is, the interval is NaN."""
    n = len(samples[0])
    if any(len(s) != n for s in samples) or n == 0:
        raise ValueError("bootstrap needs equally long, non-empty samples")
    arrays = [np.asarray(s) for s in samples]
    estimate = float(statistic(*arrays))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        value = statistic(*(a[pick] for a in arrays))
        if not np.isnan(value):
            values.append(value)
    undefined = resamples - len(values)
    if not values:
        return Interval(estimate, float("nan"), float("nan"), undefined)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high), undefined)


def mean_ci(values: Sequence[float], **kw: float) -> tuple[float, float, float]:
    """The mean with its bootstrap percentile interval."""
    interval = bootstrap_ci(
        lambda v: float(np.mean(v)),
        values,
        resamples=int(kw.get("resamples", 2000)),
        level=kw.get("level", 0.95),
        seed=int(kw.get("seed", 0)),
    )
    estimate, low, high, _ = interval
    return estimate, low, high
