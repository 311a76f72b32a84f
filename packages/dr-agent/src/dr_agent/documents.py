"""Corpus loading for `dr data index`: JSONL records, or folders of markdown, HTML and text files."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dr_core.errors import InputError
from dr_core.jsonl import OnError, RejectWriter, read_records
from dr_core.records import Document, drb_report, is_drb_report

TEXT_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html", ".htm": "html"}
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json")


def html_to_text(html: str) -> tuple[str | None, str]:
    """(title, main text) of an HTML page, boilerplate removed by trafilatura."""
    import trafilatura

    text = trafilatura.extract(html, include_comments=False, include_tables=True, favor_recall=True) or ""
    meta = trafilatura.extract_metadata(html)
    title = meta.title if meta is not None and meta.title else None
    if title is None:
        match = re.search(r"<title[^>]*>(.*?)</title>", html, re.IGNORECASE | re.DOTALL)
        title = " ".join(match.group(1).split()) if match else None
    return title, text


def _markdown_title(text: str) -> str | None:
    match = re.search(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)
    return match.group(1) if match else None


def from_record(obj: dict[str, Any]) -> Document:
    """A Document from a JSONL object: a Document itself, or a report as DeepResearch Bench ships it."""
    if is_drb_report(obj):
        # {id, prompt, article}: the report is the document, the prompt its title
        ident, prompt, article = drb_report(obj)
        return Document(id=ident, title=(prompt or "")[:300] or None, text=article)
    return Document.model_validate(obj)


def from_file(path: Path, root: Path) -> Document:
    kind = TEXT_SUFFIXES[path.suffix.lower()]
    raw = path.read_text(encoding="utf-8", errors="replace")
    doc_id = str(path.relative_to(root).with_suffix("")) if path != root else path.stem
    if kind == "html":
        title, text = html_to_text(raw)
    else:
        title, text = (_markdown_title(raw) if kind == "markdown" else None), raw
    return Document(id=doc_id, title=title or path.stem, text=text, url=path.resolve().as_uri())


def load_documents(
    sources: Iterable[str], *, on_error: OnError = "fail", rejects: RejectWriter | None = None
) -> Iterator[Document]:
    """Documents from JSONL files (or '-'), and from markdown/HTML/text files or folders of them."""
    for source in sources:
        path = Path(source)
        if source == "-" or source.endswith(JSONL_SUFFIXES):
            yield from read_records(source, on_error=on_error, rejects=rejects, adapt=from_record)
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and file.suffix.lower() in TEXT_SUFFIXES:
                    yield from_file(file, path)
        elif path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
            yield from_file(path, path)
        elif not path.exists():
            raise InputError(f"{source}: no such file or folder")
        else:
            raise InputError(f"{source}: not a JSONL, markdown, HTML or text file")
