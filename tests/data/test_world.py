"""The synthetic world: reproducible, splits that never leak, every task answerable through real search."""

from __future__ import annotations

import json
import subprocess

import pytest

from dr_agent.index import LocalIndex, build_index
from dr_data.world import build_world, sample_tasks
from dr_judge.answers import normalize
from support.cli import DR


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    world = build_world(seed=3, n_entities=600)
    tasks = list(sample_tasks(world, 300))
    directory = tmp_path_factory.mktemp("world") / "index"
    build_index(world.documents, directory)
    return world, tasks, LocalIndex(directory)


def test_one_seed_one_byte_identical_world(tmp_path):
    def make(folder, seed):
        cmd = [
            *DR,
            "data",
            "world",
            "-o",
            str(folder),
            "--seed",
            str(seed),
            "--entities",
            "400",
            "--tasks",
            "150",
        ]
        assert subprocess.run(cmd, capture_output=True).returncode == 0
        return {name: (folder / name).read_bytes() for name in ("corpus.jsonl", "train.jsonl", "test.jsonl")}

    first, again, other = make(tmp_path / "a", 7), make(tmp_path / "b", 7), make(tmp_path / "c", 8)
    assert first == again
    assert first["corpus.jsonl"] != other["corpus.jsonl"]
    tasks = [
        json.loads(line)
        for name in ("train.jsonl", "test.jsonl")
        for line in first[name].decode().splitlines()
    ]
    assert len(tasks) == 150 and {t["split"] for t in tasks} == {"train", "test"}


def test_tasks_span_one_to_four_hops_with_checklists(small_world):
    _, tasks, _ = small_world
    hops = {task.category for task in tasks}
    assert {"1-hop", "2-hop", "3-hop"} <= hops
    for task in tasks:
        assert task.type == "deep_search" and task.answer
        assert task.checklist[-1].check.type == "exact" and task.checklist[-1].check.value == task.answer
        assert len(task.meta["hops"]) == int(task.category[0]) + 1


def test_no_single_document_answers_a_multi_hop_question(small_world):
    world, tasks, _ = small_world
    docs = {d.id: d.text for d in world.documents}
    for task in tasks:
        if task.category == "1-hop":
            continue
        anchor_doc = docs[task.meta["hops"][0]["doc"]]
        assert task.answer not in anchor_doc  # the anchor's article does not state the answer


def test_test_answers_never_appear_in_training_tasks(small_world):
    _world, tasks, _ = small_world
    test = [t for t in tasks if t.split == "test"]
    train = [t for t in tasks if t.split == "train"]
    assert test and train
    test_answers = {normalize(t.answer) for t in test}
    assert not any(normalize(t.answer) in test_answers for t in train)
    test_entities = {t.meta["hops"][-1]["entity"] for t in test}
    for task in train:
        assert not test_entities & {hop["entity"] for hop in task.meta["hops"]}


def test_every_answer_is_reachable_hop_by_hop_with_the_real_search(small_world):
    _world, tasks, index = small_world
    for task in tasks:
        hops = task.meta["hops"]
        for i, hop in enumerate(hops):
            hits = index.search(hop["name"], 5)
            assert hop["doc"] in [h.id for h in hits], (task.id, hop["name"])
            text = index.get(hop["doc"]).text
            if i + 1 < len(hops):
                assert hops[i + 1]["name"] in text, (task.id, hop["name"])
        if task.meta["ask"] != "name":
            assert task.answer.replace(" km", "") in index.get(hops[-1]["doc"]).text.replace(",", "")
