"""`dr bench hops`: where multi-hop runs stop, on a hand-made run and on the oracle's runs of a world."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from support.cli import DR

HOPS = [
    {"entity": "e1", "name": "Aldo Verin", "doc": "aldo-verin", "relation": "employer"},
    {"entity": "e2", "name": "Korrin Works", "doc": "korrin-works", "relation": None},
]


def assistant(call_id, name, arguments):
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": call_id, "name": name, "arguments": arguments}],
    }


def tool(call_id, content, listed=None, opened=None):
    message = {"role": "tool", "tool_call_id": call_id, "content": content}
    if listed is not None or opened is not None:  # the ids the agent records beside the text
        message["ids"] = {"listed": listed or [], "opened": opened or []}
    return message


def test_each_hop_is_named_listed_and_opened_only_by_the_tool_that_does_it(tmp_path):
    suite = tmp_path / "tasks.jsonl"
    tasks: list[dict[str, Any]] = [
        {"id": "two", "question": "Who employs Aldo Verin?", "type": "deep_search", "answer": "x", "meta": {"hops": HOPS}},
        {"id": "one", "question": "Aldo Verin?", "type": "deep_search", "answer": "y", "meta": {"hops": HOPS[:1]}},
        {"id": "report", "question": "Write a report.", "type": "research"},
    ]  # fmt: skip
    suite.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    messages = [
        {"role": "user", "content": "Who employs Aldo Verin?"},
        # any case counts as naming the entity; the search lists only the first hop's document
        assistant("c1", "search", {"queries": ["aldo verin employer"]}),
        tool(
            "c1", "## aldo verin employer\n[aldo-verin] Aldo Verin\n    works at ...", listed=["aldo-verin"]
        ),
        # the page mentions the second document's id on a line of its own: not a search result
        assistant("c2", "open", {"ids": ["aldo-verin"]}),
        tool(
            "c2",
            "# [aldo-verin] Aldo Verin\nHe works at Korrin Works.\n[korrin-works] see also",
            opened=["aldo-verin"],
        ),
        # a failed open is not an opened document, and an answer's text names no search
        assistant("c3", "open", {"ids": ["korrin-works-typo"]}),
        tool("c3", "# korrin-works-typo\nError: no document", opened=[]),
        assistant("c4", "answer", {"text": "Korrin Works"}),
        tool("c4", "# [korrin-works] is not an open result"),
    ]
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {"task_id": "two", "messages": messages},
        {"task_id": "one", "messages": messages},
        {"task_id": "report", "messages": messages},  # no hops: not counted
        {"task_id": "elsewhere", "messages": messages},  # not in the suite: not counted
    ]
    (run / "trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = tmp_path / "hops.md"
    result = subprocess.run(
        [*DR, "bench", "hops", str(run), "--suite", str(suite), "--markdown", str(md)], capture_output=True
    )
    assert result.returncode == 0, result.stderr
    progress = json.loads(result.stdout)
    assert progress["n"] == 2
    assert progress["all_opened"] == 1  # the one-hop task
    assert progress["hops"] == [
        {"tasks": 2, "named": 2, "listed": 2, "opened": 2},
        {"tasks": 1, "named": 0, "listed": 0, "opened": 0},
    ]
    # a suite whose hops lack a document is refused with the task named, not a traceback
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({**tasks[0], "meta": {"hops": [{"name": "Aldo Verin"}]}}) + "\n")
    refused = subprocess.run([*DR, "bench", "hops", str(run), "--suite", str(broken)], capture_output=True)
    assert refused.returncode != 0 and b"task two" in refused.stderr and b"Traceback" not in refused.stderr
    # a run whose results carry no ids (the text alone) is refused, not read as "nothing listed"
    bare = tmp_path / "bare"
    bare.mkdir()
    stripped = [{k: v for k, v in m.items() if k != "ids"} for m in messages]
    (bare / "trajectories.jsonl").write_text(json.dumps({"task_id": "two", "messages": stripped}) + "\n")
    old = subprocess.run([*DR, "bench", "hops", str(bare), "--suite", str(suite)], capture_output=True)
    assert old.returncode != 0 and b"carry no ids" in old.stderr and b"Traceback" not in old.stderr
    table = md.read_text()
    assert "| hop 1's document was opened | 2 of 2 |" in table
    assert "| a search query names hop 2's entity | 0 of 1 |" in table
    assert "| every hop's document was opened | 1 of 2 |" in table


def test_the_oracle_reaches_every_hop_and_a_cut_run_stops_where_it_was_cut(tmp_path):
    world = tmp_path / "w"
    steps = [
        ["data", "world", "-o", str(world), "--entities", "150", "--tasks", "60", "--max-hops", "2"],
        ["data", "index", str(world / "corpus.jsonl"), "-i", str(world / "index")],
        ["data", "trajectories", str(world / "test.jsonl"), "--index", str(world / "index"), "-o", str(tmp_path / "t.jsonl")],
    ]  # fmt: skip
    for step in steps:
        assert subprocess.run([*DR, *step], capture_output=True).returncode == 0, step
    tasks = {t["id"]: t for t in map(json.loads, (world / "test.jsonl").read_text().splitlines())}
    runs = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    # the same runs cut right after the first document was opened
    cut = tmp_path / "cut.jsonl"
    with cut.open("w") as fh:
        for run in runs:
            first = next(i for i, m in enumerate(run["messages"]) if (m["content"] or "").startswith("# ["))
            fh.write(json.dumps({**run, "messages": run["messages"][: first + 1]}) + "\n")
    result = subprocess.run(
        [*DR, "bench", "hops", str(tmp_path / "t.jsonl"), str(cut), "--suite", str(world / "test.jsonl")],
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr
    full, partial = map(json.loads, result.stdout.splitlines())
    # a world task's hops run from the question's entity to the answer's: two or three of them
    three = sum(len(t["meta"]["hops"]) == 3 for t in tasks.values())
    assert {len(t["meta"]["hops"]) for t in tasks.values()} == {2, 3}
    assert len(tasks) == full["n"] == partial["n"]
    assert full["all_opened"] == len(tasks)
    assert [h["tasks"] for h in full["hops"]] == [len(tasks), len(tasks), three]
    assert all(h["named"] == h["listed"] == h["opened"] == h["tasks"] for h in full["hops"])
    assert partial["hops"][0]["opened"] == len(tasks)
    assert partial["hops"][1]["opened"] == partial["all_opened"] == 0
