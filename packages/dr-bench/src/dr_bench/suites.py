"""Benchmark suites: JSONL task files, and importers for public benchmark formats.

A suite is a list of `Task` records. Research tasks carry a checklist (ADR-Bench-style rubrics; the
DeepResearch Bench RACE criteria become weighted checklist items); deep-search tasks carry an exact
answer (BrowseComp style).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from dr_core.errors import InputError
from dr_core.jsonl import read_records
from dr_core.records import ChecklistItem, Task

DRB_FILES = ("query.jsonl", "criteria.jsonl")


def import_drb(directory: str | Path) -> Iterator[Task]:
    """DeepResearch Bench tasks from its query.jsonl and criteria.jsonl.

    Each criterion becomes a positive checklist item in its dimension (category), weighted by the
    dimension's weight times the criterion's weight within it, so a task's weights sum to 1 as in RACE.
    """
    directory = Path(directory)
    for name in DRB_FILES:
        if not (directory / name).is_file():
            raise InputError(
                f"{directory}: no {name}; expected a DeepResearch Bench folder ({', '.join(DRB_FILES)})"
            )
    queries = {str(q["id"]): q for q in read_records(str(directory / "query.jsonl"))}
    for record in read_records(str(directory / "criteria.jsonl")):
        task_id = str(record["id"])
        query = queries.get(task_id, {})
        items = []
        for dimension, criteria in record["criterions"].items():
            dimension_weight = float(record["dimension_weight"][dimension])
            for i, criterion in enumerate(criteria):
                items.append(
                    ChecklistItem(
                        id=f"{dimension}-{i}",
                        text=f"{criterion['criterion']}: {criterion['explanation']}",
                        weight=dimension_weight * float(criterion["weight"]),
                        category=dimension,
                        kind="explicit",
                    )
                )
        yield Task(
            id=task_id,
            question=record["prompt"],
            type="research",
            checklist=items,
            language=query.get("language"),
            category=query.get("topic"),
            meta={"source": "deepresearch_bench"},
        )


def load_suite(suite: str, drb_dir: str | Path = "data/deepresearch_bench") -> list[Task]:
    """The tasks of a suite: `drb` (DeepResearch Bench, from `drb_dir`) or a task JSONL file."""
    if suite == "drb":
        return list(import_drb(drb_dir))
    path = Path(suite)
    if not path.exists():
        raise InputError(f"no suite {suite!r}: give a task JSONL file or one of: drb")
    tasks = list(read_records(str(path), Task))
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise InputError(f"{suite}: task ids repeat; every task needs its own id")
    return tasks


def suite_bytes(tasks: list[Task]) -> bytes:
    return b"".join(orjson.dumps(t.model_dump(mode="json")) + b"\n" for t in tasks)
