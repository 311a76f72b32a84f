"""Suites: the DeepResearch Bench import of every shared task, and task files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
from conftest import DRB

from dr_bench.suites import import_drb, load_suite
from dr_core.errors import InputError


def test_every_shared_deepresearch_bench_task_imports_with_its_weighted_criteria():
    tasks = list(import_drb(DRB))
    criteria = [json.loads(line) for line in (DRB / "criteria.jsonl").read_text().splitlines()]
    assert len(tasks) == len(criteria) == 80
    assert Counter(t.language for t in tasks) == Counter(
        json.loads(line)["language"] for line in (DRB / "query.jsonl").read_text().splitlines()
    )
    for task, record in zip(tasks, criteria, strict=True):
        assert task.id == str(record["id"]) and task.question == record["prompt"] and task.type == "research"
        assert len(task.checklist) == sum(len(c) for c in record["criterions"].values())
        assert sum(item.weight for item in task.checklist) == pytest.approx(1.0, abs=1e-6)
        for dimension, weight in record["dimension_weight"].items():
            in_dimension = [i for i in task.checklist if i.category == dimension]
            assert sum(i.weight for i in in_dimension) == pytest.approx(weight, abs=1e-6)
        first = record["criterions"]["comprehensiveness"][0]
        item = next(i for i in task.checklist if i.id == "comprehensiveness-0")
        assert item.text == f"{first['criterion']}: {first['explanation']}" and item.polarity == "positive"


def test_import_command_writes_a_suite_that_loads_back(tmp_path):
    out = tmp_path / "drb.jsonl"
    cmd = [sys.executable, "-m", "dr_cli.main", "bench", "import-drb", "--data", str(DRB), "-o", str(out)]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert [t.id for t in load_suite(str(out))] == [t.id for t in load_suite("drb", DRB)]


def test_bad_suites_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no suite 'nope'"):
        load_suite("nope")
    with pytest.raises(InputError, match=r"no query\.jsonl"):
        list(import_drb(tmp_path))
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "question": "q"}\n{"id": "a", "question": "r"}\n')
    with pytest.raises(InputError, match="task ids repeat"):
        load_suite(str(dup))


def test_the_world_suite_is_the_test_split_dr_data_world_writes(tmp_path):
    from dr_bench.suites import parse_world

    folder = tmp_path / "w"
    cmd = [
        sys.executable,
        "-m",
        "dr_cli.main",
        "data",
        "world",
        "-o",
        str(folder),
        "--seed",
        "3",
        "--entities",
        "400",
        "--tasks",
        "150",
    ]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    written = [json.loads(line)["id"] for line in (folder / "test.jsonl").read_text().splitlines()]
    assert [t.id for t in load_suite("world:3:400:150")] == written
    assert parse_world("world:3") == (3, 2000, 1000) and parse_world("drb") is None
    with pytest.raises(InputError, match="write world:SEED"):
        load_suite("world:x")


def test_bench_run_on_the_world_suite_builds_its_index(tmp_path):
    from support.openai_server import Reply, scripted_server
    from support.policies import call

    with scripted_server([Reply(content=None, tool_calls=[call("answer", text="Answer: unknown")])]) as srv:
        cmd = [
            sys.executable,
            "-m",
            "dr_cli.main",
            "bench",
            "run",
            "--suite",
            "world:2:300:60",
            "-o",
            str(tmp_path / "run"),
            "--base-url",
            srv.url,
        ]
        result = subprocess.run(cmd, capture_output=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n"] == len(load_suite("world:2:300:60")) and summary["score"]["mean"] == 0.0
    assert (tmp_path / ".world-2-300-60-index" / "index.json").exists()
