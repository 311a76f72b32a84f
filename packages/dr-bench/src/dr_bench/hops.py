"""How far along a multi-hop question's chain each run got: for every hop of a task (its `meta.hops`, as
`dr data world` writes them), did a search query name the hop's entity, did a search list its document, was
that document opened. Accuracy says whether the end was reached; this says where the runs that did not
reach it stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dr_core.errors import InputError
from dr_core.jsonl import read_records
from dr_core.records import Task, Trajectory

STEPS = ("named", "listed", "opened")


def chain(task: Task, trajectory: Trajectory) -> list[dict[str, bool]]:
    """Per hop of `task`: named (a search query holds the entity's name, any case), listed (a search
    result showed its document's id), opened (an open call showed the document)."""
    queries: list[str] = []
    listed: set[str] = set()
    opened: set[str] = set()
    called: dict[str, str] = {}
    for message in trajectory.messages:
        if message.role == "assistant":
            for call in message.tool_calls:
                called[call.id] = call.name
                if call.name == "search":
                    found = call.arguments.get("queries")
                    if isinstance(found, list):
                        queries += [q.lower() for q in found if isinstance(q, str)]
        elif message.role == "tool" and called.get(message.tool_call_id or "") in ("search", "open"):
            if message.ids is None:
                raise InputError(
                    f"trajectory {trajectory.id}: its search and open results carry no ids (written "
                    "before tool results recorded them); run the agent again to analyse its hops"
                )
            listed.update(message.ids.listed)
            opened.update(message.ids.opened)
    hops = task.meta.get("hops") or []
    if not all(isinstance(h, dict) and isinstance(h.get("name"), str) and h.get("doc") for h in hops):
        raise InputError(
            f"task {task.id}: each of meta.hops needs a name and a doc (as `dr data world` writes)"
        )
    return [
        {
            "named": any(hop["name"].lower() in query for query in queries),
            "listed": hop["doc"] in listed,
            "opened": hop["doc"] in opened,
        }
        for hop in hops
    ]


def progress(run: Path, tasks: dict[str, Task]) -> dict[str, Any]:
    """Counts for one `dr bench run` folder: per hop position, of the tasks that have it, how many runs
    named / listed / opened it; and how many opened every hop's document."""
    path = run / "trajectories.jsonl" if run.is_dir() else run
    if not path.exists():
        raise InputError(f"{run}: no trajectories.jsonl (is it a `dr bench run` folder?)")
    hops: list[dict[str, int]] = []
    result: dict[str, Any] = {"run": str(run), "n": 0, "all_opened": 0, "hops": hops}
    for trajectory in read_records(str(path), Trajectory):
        task = tasks.get(trajectory.task_id or "")
        if task is None or not task.meta.get("hops"):
            continue
        steps = chain(task, trajectory)
        result["n"] += 1
        result["all_opened"] += all(step["opened"] for step in steps)
        for position, step in enumerate(steps):
            if position == len(hops):
                hops.append({"tasks": 0, **dict.fromkeys(STEPS, 0)})
            hops[position]["tasks"] += 1
            for key in STEPS:
                hops[position][key] += step[key]
    return result


LABELS = {
    "named": "a search query names hop {k}'s entity",
    "listed": "a search listed hop {k}'s document",
    "opened": "hop {k}'s document was opened",
}


def rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """One row per step of the chain (its label, then per run 'count of tasks')."""
    table = []
    for k in range(max((len(r["hops"]) for r in results), default=0)):
        for key in STEPS:
            cells = [
                f"{r['hops'][k][key]} of {r['hops'][k]['tasks']}" if k < len(r["hops"]) else "-"
                for r in results
            ]
            table.append([LABELS[key].format(k=k + 1), *cells])
    table.append(["every hop's document was opened", *[f"{r['all_opened']} of {r['n']}" for r in results]])
    return table


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| step of the chain | " + " | ".join(r["run"] for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines) + "\n"
