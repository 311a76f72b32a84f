"""Reference reports for world report tasks, perturbed copies of them, and judge training examples.

The oracle report states each fact of its task in one sentence that cites the fact's article. Perturbed
copies break it in the ways reports go wrong: a fact dropped, an entity or trade swapped for a wrong one
that search also returns, a number changed, a citation made up or moved to another of the task's articles.
The task's rule checks give the true verdict of every item on every copy, so `dr data judge` can write
(report, item) -> verdict examples for training a judge, and the same copies of an unseen world measure
it (`dr judge agree --truth`).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from dr_core.records import ChecklistItem, Example, Message, Report, Task
from dr_judge.checks import run_check
from dr_judge.judge import RATIONALE_CHARS, SYSTEM, judge_reply, judge_user_prompt

PERTURBATIONS = ("drop_fact", "swap_entity", "change_number", "fabricate_citation", "move_citation")
NUMBER_KINDS = ("birth_year", "founded_year", "length_km")
CITE = re.compile(r"\\cite\{([^}]*)\}")


def is_report_task(task: Task) -> bool:
    return task.category == "report" and bool(task.meta.get("facts"))


def _sentence(fact: dict[str, Any], value: str | None = None, doc: str | None = None) -> str:
    claim = fact["claim"] if value is None else fact["claim"].replace(fact["value"], value)
    return f"{claim} \\cite{{{doc or fact['doc']}}}."


def _render(task: Task, shown: list[dict[str, str] | None]) -> str:
    sentences = [
        _sentence(fact, s["value"], s["doc"]) for fact, s in zip(task.meta["facts"], shown, strict=True) if s
    ]
    return f"# {task.meta['subject']['name']}\n\n" + " ".join(sentences)


def _as_given(task: Task) -> list[dict[str, str] | None]:
    """What the oracle's report gives of each fact: its value and its own article."""
    return [{"value": f["value"], "doc": f["doc"]} for f in task.meta["facts"]]


def oracle_report(task: Task) -> str:
    """The reference report of a world report task: a title, then one cited sentence per fact."""
    return _render(task, _as_given(task))


def perturb(task: Task, kinds: str | list[str], rng: random.Random) -> str | None:
    """The oracle report broken in the given ways (PERTURBATIONS), each at its own fact drawn by `rng`;
    None when the task has too few facts the perturbations apply to."""
    made = perturbed(task, [kinds] if isinstance(kinds, str) else kinds, rng)
    return None if made is None else _render(task, made)


def perturbed(task: Task, kinds: list[str], rng: random.Random) -> list[dict[str, str] | None] | None:
    """What the report shows of each fact after the perturbations: its value and cited article, or None
    where the fact was dropped."""
    facts = task.meta["facts"]
    docs = task.meta["supporting_docs"]
    shown = _as_given(task)
    used: set[int] = set()
    for kind in kinds:
        if kind == "swap_entity":
            options = [i for i, f in enumerate(facts) if f["kind"] not in NUMBER_KINDS]
        elif kind == "change_number":
            options = [i for i, f in enumerate(facts) if f["kind"] in NUMBER_KINDS]
        elif kind == "move_citation":
            options = list(range(len(facts))) if len(docs) > 1 else []
        elif kind in PERTURBATIONS:
            options = list(range(len(facts)))
        else:
            raise ValueError(f"unknown perturbation {kind!r}; known: {', '.join(PERTURBATIONS)}")
        options = [i for i in options if i not in used]
        if not options:
            return None
        at = rng.choice(options)
        used.add(at)
        fact = facts[at]
        if kind == "drop_fact":
            shown[at] = None
        elif kind in ("swap_entity", "change_number"):
            shown[at] = {"value": fact["wrong"], "doc": fact["doc"]}
        elif kind == "fabricate_citation":
            made_up = f"{fact['doc']}-{rng.choice(('archive', 'history', 'records', 'notes'))}"
            shown[at] = {"value": fact["value"], "doc": made_up}
        else:  # move_citation
            shown[at] = {"value": fact["value"], "doc": rng.choice([d for d in docs if d != fact["doc"]])}
    return shown


def reports(task: Task, per_task: int, rng: random.Random, most: int = 1) -> Iterator[Report]:
    """The oracle report and `per_task` perturbed ones, each with 1 to `most` perturbations (kinds in
    turn from a random start). A Report's meta names its perturbations, "+"-joined ("none": the
    oracle's), and what it shows of each fact (value and cited article; null where dropped)."""
    oracle = _as_given(task)
    yield Report(
        id=f"{task.id}-oracle",
        task_id=task.id,
        text=_render(task, oracle),
        meta={"perturbation": "none", "shown": oracle},
    )
    start = rng.randrange(len(PERTURBATIONS))
    made = 0
    for step in range(len(PERTURBATIONS) * 3):
        if made >= per_task:
            return
        count = rng.randint(1, most)
        kinds = sorted({PERTURBATIONS[(start + step + k * 2) % len(PERTURBATIONS)] for k in range(count)})
        shown = perturbed(task, kinds, rng)
        if shown is None:
            continue
        name = "+".join(kinds)
        yield Report(
            id=f"{task.id}-{name}-{made}",
            task_id=task.id,
            text=_render(task, shown),
            meta={"perturbation": name, "shown": shown},
        )
        made += 1


def true_verdict(item: ChecklistItem, text: str) -> str:
    """The verdict of the item's rule check on the text."""
    assert item.check is not None
    return "met" if run_check(item.check, text)[0] else "not_met"


def evidence(item: ChecklistItem, task: Task, shown: list[dict[str, str] | None], text: str) -> str:
    """The one-line rationale a trained judge learns to write before its verdict: what the report gives
    for the item's fact (value, and the article it cites for it) beside what the item asks, so that the
    verdict is a comparison of the two; for the fatal item, each article the report cites, marked as one
    the item allows or not (a decision per id, which a small model makes by finding the id in the item),
    within the reply's rationale cap (RATIONALE_CHARS: a constrained reply cuts a longer one)."""
    if item.category == "fatal":
        cited = list(dict.fromkeys(m.strip() for g in CITE.findall(text) for m in g.split(",") if m.strip()))
        allowed = set(task.meta["allowed_sources"])
        if not cited:
            return "It cites nothing."
        marked = [f"{key} ({'allowed' if key in allowed else 'not allowed'})" for key in cited]
        said = f"It cites {', '.join(marked)}."
        if len(said) > RATIONALE_CHARS:
            outside = [key for key in cited if key not in allowed]
            inside = len(cited) - len(outside)
            said = f"It cites {inside} allowed sources" + (
                f" and {', '.join(outside)} (not allowed)." if outside else ", none other."
            )
        return said[:RATIONALE_CHARS]
    index = int(re.sub(r"\D", "", item.id)) - 1
    fact, given = task.meta["facts"][index], shown[index]
    if item.category == "citation":
        said = f"{given['value']} citing {given['doc']}" if given else "nothing"
        return f"The report gives {said}; the item asks {fact['value']} citing {fact['doc']}."
    asked = fact["wrong"] if item.category == "flaw" else fact["value"]
    return f"The report gives {given['value'] if given else 'nothing'}; the item says {asked}."


def examples(task: Task, report: Report, per_call: int = 0) -> Iterator[tuple[Example, str]]:
    """Judge examples of one report: the items in calls of `per_call` (0: all in one), grouped as the
    judge groups them (`dr judge score --batch N --no-checks`), each reply the evidence and the rules'
    verdict per item. Yields (example, its balancing group): "category:verdict" for one item a call, the
    report's perturbation otherwise."""
    items = task.checklist
    shown = report.meta["shown"]
    size = per_call or len(items)
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        ruled = [
            (item.id, true_verdict(item, report.text), evidence(item, task, shown, report.text))
            for item in chunk
        ]
        messages = [
            Message(role="system", content=SYSTEM),
            Message(role="user", content=judge_user_prompt(task.question, report.text, chunk)),
            Message(role="assistant", content=judge_reply(ruled)),
        ]
        meta: dict[str, Any] = {
            "task_id": task.id,
            "report_id": report.id,
            "perturbation": report.meta["perturbation"],
            "items": [item_id for item_id, _, _ in ruled],
            "verdicts": [verdict for _, verdict, _ in ruled],
        }
        one = len(chunk) == 1
        group = f"{chunk[0].category}:{ruled[0][1]}" if one else report.meta["perturbation"]
        yield Example(messages=messages, meta=meta), group


def balanced(
    pool: list[tuple[Example, str]], limit: int, rng: random.Random
) -> tuple[list[Example], dict[str, int]]:
    """At most `limit` examples, as evenly as the pool allows over their groups (for one item a call,
    its kind and true verdict, so true and false verdicts are balanced within each kind of item; else the
    report's perturbation); with the count taken from each group."""
    groups: dict[str, list[Example]] = defaultdict(list)
    for example, group in pool:
        groups[group].append(example)
    for members in groups.values():
        rng.shuffle(members)
    taken: dict[str, int] = dict.fromkeys(sorted(groups), 0)
    chosen: list[Example] = []
    while len(chosen) < limit and any(taken[g] < len(groups[g]) for g in groups):
        for group in sorted(groups):
            if len(chosen) >= limit:
                break
            if taken[group] < len(groups[group]):
                chosen.append(groups[group][taken[group]])
                taken[group] += 1
    rng.shuffle(chosen)
    return chosen, taken
