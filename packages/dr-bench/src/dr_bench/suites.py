"""Benchmark suites: JSONL task files, and importers for public benchmark formats.

A suite is a list of `Task` records. Research tasks carry a checklist (ADR-Bench-style rubrics; the
DeepResearch Bench RACE criteria become weighted checklist items); deep-search tasks carry an exact
answer (BrowseComp style).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dr_core.errors import InputError
from dr_core.jsonl import read_records
from dr_core.records import ChecklistItem, Document, Task

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


def parse_world(suite: str) -> tuple[int, int, int] | None:
    """(seed, entities, tasks) of `world:SEED[:ENTITIES[:TASKS]]`, None for other suites."""
    from dr_data.world_defaults import DEFAULT_ENTITIES, DEFAULT_TASKS

    if not suite.startswith("world:"):
        return None
    parts = suite.split(":")[1:]
    usage = f"suite {suite!r}: write world:SEED, world:SEED:ENTITIES or world:SEED:ENTITIES:TASKS"
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise InputError(usage) from None
    if not 1 <= len(numbers) <= 3:
        raise InputError(usage)
    seed, entities, tasks = numbers + [0, DEFAULT_ENTITIES, DEFAULT_TASKS][len(numbers) :]
    return seed, entities, tasks


def world_suite(seed: int, entities: int, tasks: int) -> tuple[list[Task], list[Document]]:
    """The test split that `dr data world --seed SEED --entities E --tasks T` writes, and the corpus."""
    from dr_data.world import build_world, sample_tasks

    world = build_world(seed, entities)
    test = [task for task in sample_tasks(world, tasks) if task.split == "test"]
    return test, world.documents


def load_suite(suite: str, drb_dir: str | Path = "data/deepresearch_bench") -> list[Task]:
    """The tasks of a suite: `drb` (DeepResearch Bench, from `drb_dir`), `world:SEED[:ENTITIES[:TASKS]]`
    (the synthetic world's test split), or a task JSONL file."""
    if suite == "drb":
        return list(import_drb(drb_dir))
    world = parse_world(suite)
    if world is not None:
        return world_suite(*world)[0]
    path = Path(suite)
    if not path.exists():
        raise InputError(f"no suite {suite!r}: give a task JSONL file, drb, or world:SEED")
    tasks = list(read_records(str(path), Task))
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise InputError(f"{suite}: task ids repeat; every task needs its own id")
    return tasks
