"""Deterministic checks and exact-answer normalization."""

from __future__ import annotations

from dr_core.records import Check, Citation, Source
from dr_judge.answers import extract_answer, matches, normalize
from dr_judge.checks import run_check


def test_contains_and_regex():
    assert run_check(Check(type="contains", value="Ada Quist"), "founded by ada quist")[0]
    assert not run_check(
        Check(type="contains", value="Ada Quist", ignore_case=False), "founded by ada quist"
    )[0]
    ok, why = run_check(Check(type="regex", value=r"\b18[0-9]{2}\b"), "in 1821 it was")
    assert ok and "'1821'" in why
    ok, why = run_check(Check(type="regex", value="(unclosed"), "x")
    assert not ok and why.startswith("invalid regex")


def test_exact_uses_the_stated_answer_normalized():
    check = Check(type="exact", value="Ada Quist")
    assert run_check(check, "Answer: ada quist.\nShe founded it \\cite{d1}.")[0]
    assert run_check(check, "It was Ada Quist, a shipwright.")[0]
    assert not run_check(check, "I could not find it.\nAda Quist is mentioned in one source.")[0]


def test_cites_accepts_markers_source_ids_and_urls():
    citations = [Citation(marker="w1", source=Source(id="w1", url="https://example.org/velmora"))]
    assert run_check(Check(type="cites", value="https://example.org/velmora"), "text", citations)[0]
    assert run_check(Check(type="cites", value="d7"), "as shown \\cite{d3, d7}")[0]
    assert not run_check(Check(type="cites", value="d9"), "as shown \\cite{d3, d7}", citations)[0]


def test_normalization():
    assert normalize("The  Ada-Quist Company, Ltd.") == "adaquist company ltd"
    assert normalize("1,234,567 people") == "1234567 people"
    assert normalize("Ｆｕｌｌ width") == "full width"
    assert normalize("答案：北京。") == "答案北京"
    assert extract_answer("Reasoning first.\n**Final answer:** 42 km") == "42 km"
    assert matches("42 km \\cite{d1}", ["42 km"]) and not matches("", ["42"])
    assert matches("Final answer: 1,200", ["1200"])
    assert normalize("A. Quist") == "a quist" and not matches("Answer: Adelheid Quist", ["A. Quist"])
