"""Checklist scoring, as the Step-DeepResearch report's judger does it.

Each item's signed weight is its weight for a requirement (positive polarity) and minus its absolute
weight for a flaw (negative polarity). An item is credited with 1 or 0:
    strict mode: a requirement only when fully met; a flaw when present even partly;
    graded mode: met 1, partially met 0.5, not met 0, for requirements and flaws alike.
The score is the credited signed weights over the sum of the positive ones, clipped to [0, 1] (as rubric
graders such as HealthBench do): flaws take away from what was earned. With no positive weights, the
score is 1 minus the share of flaw weight present. A fatal flaw present (even partly) makes it 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from dr_core.records import ChecklistItem, Verdict

Mode = Literal["strict", "graded"]


def signed_weight(item: ChecklistItem) -> float:
    return item.weight if item.polarity == "positive" else -abs(item.weight)


def credit(item: ChecklistItem, verdict: str, mode: Mode) -> float:
    if mode == "graded":
        return {"met": 1.0, "partially_met": 0.5, "not_met": 0.0}[verdict]
    if item.polarity == "positive":
        return 1.0 if verdict == "met" else 0.0
    return 1.0 if verdict in ("met", "partially_met") else 0.0


def score(
    items: Sequence[ChecklistItem], verdicts: Sequence[Verdict], mode: Mode = "strict"
) -> tuple[float, bool]:
    """(score in [0, 1], whether a fatal flaw was present) for verdicts on `items`."""
    by_id = {v.item_id: v.verdict for v in verdicts}
    missing = [item.id for item in items if item.id not in by_id]
    if missing:
        raise ValueError(f"no verdict for checklist items {', '.join(missing)}")
    fatal = any(item.fatal and by_id[item.id] in ("met", "partially_met") for item in items)
    if fatal:
        return 0.0, True
    earned = sum(signed_weight(item) * credit(item, by_id[item.id], mode) for item in items)
    possible = sum(w for w in (signed_weight(item) for item in items) if w > 0)
    if possible > 0:
        return min(1.0, max(0.0, earned / possible)), False
    penalty = sum(-w for w in (signed_weight(item) for item in items) if w < 0)
    if penalty == 0:
        return 1.0, False
    return max(0.0, 1.0 + earned / penalty), False
