"""Text analysis for the local index: lowercase word terms, and overlapping bigrams for CJK text.

Done in Python (not a tantivy tokenizer) so the index and the queries share one definition, and so
Chinese and Japanese text, which has no spaces, is still searchable term by term.
"""

from __future__ import annotations

import re

# Han, Hiragana, Katakana, Hangul: scripts written without spaces between words.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_]+", re.UNICODE)
_IS_CJK = re.compile(rf"[{_CJK}]")
# the same words in lowercased ASCII text, where `[^\W_]` is exactly [a-z0-9]: a simpler, faster pattern
_ASCII_TOKEN = re.compile(r"[a-z0-9]+")

STOPWORDS = frozenset(
    (
        "a an and are as at be by did do does for from has have how in is it its of on or that the these "
        "this those to was were what when where which who whom why with"
    ).split()
)


def terms(text: str, keep_stopwords: bool = False) -> list[str]:
    """The index terms of `text`: lowercased words; character bigrams (or a lone character) for CJK."""
    lowered = text.lower()
    if lowered.isascii():  # no CJK to split: the words as found (most text, and the fast path)
        found = _ASCII_TOKEN.findall(lowered)
        return found if keep_stopwords else [t for t in found if t not in STOPWORDS]
    out: list[str] = []
    for token in _TOKEN.findall(lowered):
        if not token.isascii() and _IS_CJK.match(token):
            if len(token) == 1:
                out.append(token)
            else:
                out.extend(token[i : i + 2] for i in range(len(token) - 1))
        elif keep_stopwords or token not in STOPWORDS:
            out.append(token)
    return out
