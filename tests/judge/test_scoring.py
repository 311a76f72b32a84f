"""Scoring arithmetic, rule by rule, on hand-computed cases."""

from __future__ import annotations

import pytest

from dr_core.records import ChecklistItem, Verdict
from dr_judge.scoring import score


def items(*specs):
    """specs: (weight, polarity[, fatal]) per item, ids c0, c1, ..."""
    out = []
    for i, spec in enumerate(specs):
        weight, polarity, *rest = spec
        out.append(
            ChecklistItem(id=f"c{i}", text=f"item {i}", weight=weight, polarity=polarity, fatal=bool(rest))
        )
    return out


def verdicts(*values):
    return [Verdict(item_id=f"c{i}", verdict=v) for i, v in enumerate(values)]


def test_strict_counts_requirements_only_when_fully_met():
    checklist = items((3, "positive"), (1, "positive"), (2, "positive"))
    # met 3, partial 1 -> 0, not met 2 -> 0: 3 / 6
    assert score(checklist, verdicts("met", "partially_met", "not_met")) == (0.5, False)


def test_graded_gives_half_credit_for_partial():
    checklist = items((3, "positive"), (1, "positive"), (2, "positive"))
    # 3 + 0.5 + 0 = 3.5 of 6
    assert score(checklist, verdicts("met", "partially_met", "not_met"), "graded") == (
        pytest.approx(3.5 / 6),
        False,
    )


def test_strict_flaws_count_when_present_even_partly():
    checklist = items((4, "positive"), (4, "positive"), (2, "negative"))
    # earned 4 + 4 = 8; the flaw is partly present: -2 -> 6 of 8
    assert score(checklist, verdicts("met", "met", "partially_met")) == (0.75, False)
    # graded: the partial flaw costs half its weight: 8 - 1 = 7 of 8
    assert score(checklist, verdicts("met", "met", "partially_met"), "graded") == (0.875, False)
    # absent flaw costs nothing
    assert score(checklist, verdicts("met", "met", "not_met")) == (1.0, False)


def test_a_negative_weight_on_a_flaw_means_the_same_as_a_positive_one():
    a = items((2, "positive"), (1, "negative"))
    b = items((2, "positive"), (-1, "negative"))
    v = verdicts("met", "met")
    assert score(a, v) == score(b, v) == (0.5, False)


def test_the_score_is_clipped_to_zero_and_one():
    checklist = items((1, "positive"), (5, "negative"))
    assert score(checklist, verdicts("met", "met")) == (0.0, False)  # 1 - 5 < 0
    assert score(items((1, "positive")), verdicts("met")) == (1.0, False)


def test_a_fatal_flaw_present_zeroes_the_score():
    checklist = items((5, "positive"), (1, "negative", "fatal"))
    assert score(checklist, verdicts("met", "partially_met")) == (0.0, True)
    assert score(checklist, verdicts("met", "not_met")) == (1.0, False)


def test_only_flaws_score_one_minus_the_share_present():
    checklist = items((1, "negative"), (3, "negative"))
    assert score(checklist, verdicts("met", "not_met")) == (0.75, False)
    assert score(checklist, verdicts("not_met", "not_met")) == (1.0, False)
    assert score([], []) == (1.0, False)


def test_a_missing_verdict_is_an_error():
    with pytest.raises(ValueError, match="no verdict for checklist items c1"):
        score(items((1, "positive"), (1, "positive")), verdicts("met"))


def test_only_a_flaw_can_be_fatal():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"only a flaw \(polarity negative\) can be fatal"):
        ChecklistItem(id="c0", text="cites sources", weight=1, polarity="positive", fatal=True)
    # a met requirement never zeroes the score: the record is refused before it is scored
    flaw = ChecklistItem(id="c0", text="fabricated data", weight=1, polarity="negative", fatal=True)
    assert score([flaw], verdicts("not_met")) == (1.0, False)


def test_a_negative_weight_on_a_requirement_is_read_as_a_flaw():
    # as `dr data reverse` writes from a model's output: weight -2, polarity positive
    item = ChecklistItem(id="c1", text="unsupported claims", weight=-2, polarity="positive")
    assert (item.polarity, item.weight) == ("negative", 2)
    checklist = [ChecklistItem(id="c0", text="covers X", weight=2), item]
    # partly present counts against the score, as any flaw in strict mode: (2 - 2) / 2
    assert score(checklist, verdicts("met", "partially_met")) == (0.0, False)
    assert score(checklist, verdicts("met", "not_met")) == (1.0, False)
