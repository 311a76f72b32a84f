"""A judge's verdicts against true ones, item by item: accuracy, Cohen's kappa and the report-level score
error, with 95% intervals from a bootstrap over reports (the items of one report are not independent, so
whole reports are drawn), abstentions counted apart.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dr_judge.stats import kappa_of_table

LABELS = ("met", "partially_met", "not_met")


@dataclass
class Pairing:
    """One judged response beside its true judgment: (item, predicted, true) per item, and the scores."""

    key: str
    items: list[tuple[str, str, str]]
    predicted_score: float | None
    true_score: float | None
    group: str = ""
    item_groups: dict[str, str] = field(default_factory=dict)  # item id -> its kind


def _table(items: Sequence[tuple[str, str, str]]) -> np.ndarray:
    """The 3x3 confusion counts (predicted, true) over decided items; abstentions left out."""
    table = np.zeros((len(LABELS), len(LABELS)))
    for _, predicted, true in items:
        if predicted in LABELS and true in LABELS:
            table[LABELS.index(predicted), LABELS.index(true)] += 1
    return table


def accuracy_of(table: np.ndarray) -> float:
    n = table.sum()
    return float(np.trace(table) / n) if n else float("nan")


def _interval(
    values: Callable[[np.ndarray], float], n: int, resamples: int, seed: int
) -> tuple[float, float, float]:
    """(estimate, low, high): the statistic of all clusters and the 95% percentile interval over
    resamples of the clusters' indices (undefined resamples left out)."""
    estimate = values(np.arange(n))
    rng = np.random.default_rng(seed)
    drawn = [values(rng.integers(0, n, n)) for _ in range(resamples)]
    drawn = [v for v in drawn if not np.isnan(v)]
    if not drawn:
        return estimate, float("nan"), float("nan")
    low, high = np.percentile(drawn, [2.5, 97.5])
    return estimate, float(low), float(high)


def _stat(estimate: float, low: float, high: float) -> dict[str, Any]:
    return {"value": estimate, "ci95": [low, high]}


def verdict_agreement(pairings: Sequence[Pairing], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per-item accuracy and kappa over decided items, abstentions, and the score error over responses
    both sides scored; each with a 95% interval over responses."""
    tables = np.stack([_table(p.items) for p in pairings]) if pairings else np.zeros((0, 3, 3))
    items = sum(len(p.items) for p in pairings)
    abstained = sum(1 for p in pairings for _, predicted, _ in p.items if predicted == "abstain")
    result: dict[str, Any] = {
        "responses": len(pairings),
        "items": items,
        "abstained": abstained,
        "abstained_share": abstained / items if items else 0.0,
    }
    if tables.sum() > 0:
        n = len(pairings)
        result["accuracy"] = _stat(*_interval(lambda i: accuracy_of(tables[i].sum(0)), n, resamples, seed))
        result["kappa"] = _stat(*_interval(lambda i: kappa_of_table(tables[i].sum(0)), n, resamples, seed))
    scored = [p for p in pairings if p.predicted_score is not None and p.true_score is not None]
    result["scored_responses"] = len(scored)
    if scored:
        diff = np.array([p.predicted_score - p.true_score for p in scored])  # type: ignore[operator]
        m = len(scored)
        result["score_abs_error"] = _stat(
            *_interval(lambda i: float(np.abs(diff[i]).mean()), m, resamples, seed)
        )
        result["score_bias"] = _stat(*_interval(lambda i: float(diff[i].mean()), m, resamples, seed))
    return result


def by_group(
    pairings: Sequence[Pairing], resamples: int = 2000, seed: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The agreement of each response group (a perturbation kind, say) and of each item kind."""
    groups: dict[str, list[Pairing]] = defaultdict(list)
    kinds: dict[str, list[Pairing]] = defaultdict(list)
    for pairing in pairings:
        groups[pairing.group].append(pairing)
        split: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        for item in pairing.items:
            split[pairing.item_groups.get(item[0], "")].append(item)
        for kind, members in split.items():
            kinds[kind].append(Pairing(pairing.key, members, None, None))
    by_response = {
        name: verdict_agreement(members, resamples, seed) for name, members in sorted(groups.items()) if name
    }
    by_item = {
        name: verdict_agreement(members, resamples, seed) for name, members in sorted(kinds.items()) if name
    }
    return by_response, by_item
