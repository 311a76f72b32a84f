"""The local search index over real text."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dr_agent.analysis import terms
from dr_agent.index import LocalIndex, build_index
from dr_core.errors import InputError
from dr_core.records import Document
from support import must


def known_item_queries(reports_path):
    """For each report, a long line from its middle: a query only that report should answer best."""
    for line in reports_path.read_text().splitlines():
        report = json.loads(line)
        lines = [x for x in report["article"].split("\n") if len(x.strip()) > 80]
        yield str(report["id"]), lines[len(lines) // 2][:120]


def test_known_item_queries_find_their_report_in_both_languages(drb_index, drb_reports):
    index = LocalIndex(drb_index)
    assert len(index) == 80
    found = {"en": [0, 0], "zh": [0, 0]}
    for report_id, query in known_item_queries(drb_reports):
        language = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in query) else "en"
        hits = index.search(query, 3)
        found[language][0] += bool(hits) and hits[0].id == report_id
        found[language][1] += 1
    for language, (hit, total) in found.items():
        assert total >= 30, language
        assert hit / total >= 0.9, (language, hit, total)


def test_search_returns_titles_snippets_and_opens_by_id(drb_index):
    index = LocalIndex(drb_index)
    hit = index.search("人工智能 教育 人才培养", 1)[0]
    assert "人工智能" in must(hit.title) and "人工智能" in hit.snippet
    doc = index.get(hit.id)
    assert doc is not None and len(doc.text) > 1000
    assert index.get("no-such-id") is None
    assert index.search("", 5) == [] and index.search("the of and", 5) == []


def test_cjk_text_is_indexed_as_bigrams_and_words_are_lowercased():
    assert terms("AI 教育领域 The Founder") == ["ai", "教育", "育领", "领域", "founder"]


def test_ascii_text_splits_into_the_same_words_as_the_general_pattern():
    # ASCII text takes a simpler pattern; it must find exactly the words the general one finds
    import random
    import re

    from dr_agent.analysis import _TOKEN

    rng = random.Random(0)
    alphabet = "abcXYZ09_-' .,\n\t()/K\u212a"  # the Kelvin sign lowercases to an ASCII k
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        lowered = text.lower()
        if lowered.isascii():
            assert terms(text, keep_stopwords=True) == _TOKEN.findall(lowered), text
    assert terms("Snake_case, x2 and 3D-Print", keep_stopwords=True) == [
        "snake",
        "case",
        "x2",
        "and",
        "3d",
        "print",
    ]
    assert re.fullmatch(r"[a-z0-9 ]*", " ".join(terms("Ünïcode stays out of the fast path"))) is None


def test_index_from_a_folder_of_markdown_html_and_text(tmp_path):
    from dr_agent.documents import load_documents

    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "velmora.md").write_text("# Velmora\n\nVelmora is a river port founded by Ada Quist in 1821.\n")
    (corpus / "sub" / "ostrava.txt").write_text("Ostrava lies on the Oder and grew with its coal mines.")
    (corpus / "page.html").write_text(
        "<html><head><title>Quist family</title></head><body><nav>Home | About</nav>"
        "<article><h1>The Quist family</h1><p>Ada Quist, a shipwright, founded the river port of Velmora "
        "and ran its first yard for thirty years, building barges for the salt trade.</p>"
        "<p>Her children kept the yard until the flood of 1870 destroyed the lower town.</p></article>"
        "<footer>Copyright</footer></body></html>"
    )
    (corpus / "image.png").write_bytes(b"\x89PNG")
    docs = list(load_documents([str(corpus)]))
    assert sorted(d.id for d in docs) == ["page", "sub/ostrava", "velmora"]
    by_id = {d.id: d for d in docs}
    assert by_id["velmora"].title == "Velmora"
    assert "Quist family" in must(by_id["page"].title) and "shipwright" in by_id["page"].text
    assert "Copyright" not in by_id["page"].text
    build_index(docs, tmp_path / "index")
    assert LocalIndex(tmp_path / "index").search("who founded Velmora", 1)[0].id in ("velmora", "page")


def test_hybrid_index_finds_a_paraphrase_bm25_alone_misses(tmp_path):
    docs = [
        Document(id="cars", text="Automobiles and their engines: pistons, crankshafts and fuel injection."),
        Document(id="cats", text="Felines purr, hunt mice and sleep most of the day."),
        Document(id="rain", text="Precipitation forms when water vapour condenses into droplets."),
    ]
    build_index(docs, tmp_path / "bm25")
    build_index(docs, tmp_path / "hybrid", hybrid=True)
    query = "kitten behaviour"  # no word in common with any document
    assert LocalIndex(tmp_path / "bm25").search(query, 1) == []
    assert LocalIndex(tmp_path / "hybrid").search(query, 1)[0].id == "cats"


def test_duplicate_ids_are_skipped_and_counted(tmp_path):
    info = build_index([Document(id="a", text="one"), Document(id="a", text="two")], tmp_path / "i")
    assert info["documents"] == 1 and info["duplicates_skipped"] == 1


def test_opening_something_that_is_not_an_index_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="not a dr search index"):
        LocalIndex(tmp_path)


def test_dr_data_index_command_reports_bad_lines_with_file_and_line(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text('{"id": "a", "text": "alpha"}\n{"id": "b"}\n')
    cmd = [sys.executable, "-m", "dr_cli.main", "data", "index", str(src), "-i", str(tmp_path / "idx")]
    result = subprocess.run(cmd, capture_output=True)
    assert result.returncode == 2
    assert f"{src}:2: not a valid document: field 'text': Field required" in result.stderr.decode()
    assert not (tmp_path / "idx").exists()
    result = subprocess.run([*cmd, "--on-error", "skip"], capture_output=True)
    assert result.returncode == 0, result.stderr
    assert len(LocalIndex(tmp_path / "idx")) == 1
    assert "idx.rejects.jsonl" in result.stderr.decode()
