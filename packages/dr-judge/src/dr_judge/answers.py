"""Short-answer normalization and matching for deep-search tasks (BrowseComp-style exact answers)."""

from __future__ import annotations

import re
import string
import unicodedata

# "a" before a period is an initial ("A. Quist"), not an article
_ARTICLES = re.compile(r"\b(?:the|an|a(?!\.))\b")
_PUNCT = str.maketrans("", "", string.punctuation + "“”‘’«»、，。：；！？（）【】")
_ANSWER_LINE = re.compile(r"^\W*(?:final\s+)?answer\s*\**\s*[:：]\W*?(\w.*)$", re.IGNORECASE | re.MULTILINE)
_CITE = re.compile(r"\\cite\{[^}]*\}")
_NUMBER = re.compile(r"(?<=\d),(?=\d{3}\b)")


def normalize(text: str) -> str:
    """Lowercase, NFKC, no citations, punctuation, articles or thousands separators, single spaces."""
    text = unicodedata.normalize("NFKC", _CITE.sub(" ", text)).lower()
    text = _ARTICLES.sub(" ", _NUMBER.sub("", text))
    text = text.translate(_PUNCT)
    return " ".join(text.split())


def extract_answer(text: str) -> str:
    """The stated answer of a final text: an `Answer: ...` line when there is one, else the first line."""
    match = _ANSWER_LINE.search(text)
    if match:
        return match.group(1).strip()
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def matches(prediction: str, golds: list[str]) -> bool:
    """True when the stated answer equals a gold answer after normalization, or states it as a whole
    phrase ("It was Ada Quist." for "Ada Quist")."""
    stated = normalize(extract_answer(prediction))
    if not stated:
        return False
    for gold in golds:
        target = normalize(gold)
        if target and (stated == target or f" {target} " in f" {stated} "):
            return True
    return False
