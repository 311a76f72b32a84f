"""Deterministic checklist checks: decided from the text alone, never by a model."""

from __future__ import annotations

import re

from dr_core.records import Check, Citation
from dr_judge.answers import matches


def run_check(check: Check, text: str, citations: list[Citation] | None = None) -> tuple[bool, str]:
    """(passed, rationale) of one check against a report or answer and its citations."""
    flags = re.IGNORECASE if check.ignore_case else 0
    if check.type == "contains":
        found = check.value.lower() in text.lower() if check.ignore_case else check.value in text
        return found, f"text {'contains' if found else 'does not contain'} {check.value!r}"
    if check.type == "regex":
        try:
            match = re.search(check.value, text, flags)
        except re.error as exc:
            return False, f"invalid regex {check.value!r}: {exc}"
        return (
            match is not None,
            f"regex {check.value!r} {'matches ' + repr(match.group()) if match else 'does not match'}",
        )
    if check.type == "exact":
        ok = matches(text, [check.value])
        return ok, f"the stated answer {'matches' if ok else 'does not match'} {check.value!r}"
    # cites / cites_outside: the sources the report cites, among its citations or as \cite{} markers
    keys = cited(text, citations)
    if check.ignore_case:
        keys = {k.lower() for k in keys}
    if check.type == "cites_outside":
        allowed = {k.strip().lower() if check.ignore_case else k.strip() for k in check.value.split(",")}
        others = sorted(keys - allowed)
        if others:
            return True, f"cites {', '.join(others)}, not one of the allowed sources"
        return False, "cites only allowed sources"
    wanted = check.value.lower() if check.ignore_case else check.value
    ok = wanted in keys
    return ok, f"{'cites' if ok else 'does not cite'} {check.value!r}"


def cited(text: str, citations: list[Citation] | None = None) -> set[str]:
    """The ids, URLs and markers of every source a text cites: its citations' and its \\cite{} markers'."""
    keys: set[str] = set()
    for citation in citations or []:
        keys.add(citation.marker)
        if citation.source is not None:
            keys.update(k for k in (citation.source.id, citation.source.url) if k)
    keys.update(
        marker.strip()
        for group in re.findall(r"\\cite\{([^}]*)\}", text)
        for marker in group.split(",")
        if marker.strip()
    )
    return keys
