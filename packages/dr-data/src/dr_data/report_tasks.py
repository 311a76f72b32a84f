"""Report tasks over the synthetic world: write a short cited report on one entity, with a checklist whose
every item has a true verdict decided by a rule.

A task asks for 3 to 6 facts about a subject, drawn from 2 to 4 articles: the subject's own attributes and
relations, and those of entities it links to ("the river the city of its headquarters lies on"). Its
checklist has, per fact,
- a requirement that the report states it (`regex`: one sentence names the entity and the value),
- a requirement that the sentence stating it cites the fact's article (`regex`: that sentence, then a
  \\cite of that article before it ends),
- a flaw: a claim that contradicts the world (`contains` a wrong value: an entity of the same type that a
  search for the subject also brings up, or a year, length or trade that no supporting article names),
and one fatal flaw: a citation of anything but the task's articles (`cites_outside`), which is what a
made-up or never-opened source looks like from the text.

Names and values are matched case-sensitively, so a citation key (the article's id, a lowercase slug of its
title) never counts as naming the entity. The rule checks are the truth. A model judge is measured against
them (`dr judge score --no-checks`, then `dr judge agree` against the rules' judgments), and RL's reward
hacking is the gap between the two. Everything is drawn from its own `random.Random`, so adding report
tasks changes no question task of a seed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

from dr_core.records import Check, ChecklistItem, Task
from dr_data.world import INDUSTRIES, OCCUPATIONS, PHRASES, RELATION_SENTENCES, Entity, World, _split_of

# What the question asks for each fact, and the sentence a report states it in ({x}: the entity, {y}: the
# value). The sentences are the articles' own first phrasings.
ATTRIBUTE_ASKS = {
    ("person", "birth_year"): ("when {x} was born", "{x} was born in {y}"),
    ("person", "occupation"): ("the occupation of {x}", "{x} worked as a {y}"),
    ("company", "founded_year"): ("when {x} was established", "{x} was established in {y}"),
    ("company", "industry"): ("the industry {x} works in", "{x} works in {y}"),
    ("city", "founded_year"): ("when {x} was founded", "{x} was founded in {y}"),
    ("university", "founded_year"): ("when {x} was founded", "The {x} was founded in {y}"),
    ("river", "length_km"): ("how long {x} is", "The {x} is {y} long"),
}
RELATION_ASKS = {
    "born_in": "where {x} was born",
    "studied_at": "where {x} studied",
    "founded": "the company {x} founded",
    "founded_by": "who founded {x}",
    "headquartered_in": "where {x} has its headquarters",
    "located_in": "the city {x} is in",
    "lies_on": "the river {x} lies on",
}
SUBJECT_TYPES = ("company", "person", "university", "city")


def _fact(world: World, entity: Entity, key: str, described: str) -> dict[str, Any]:
    """One fact about `entity`: its attribute `key` or the target of its relation `key`; `described` names
    the entity in the question (its name, or how it relates to the subject)."""
    if key in entity.links:
        target = world.entities[entity.links[key]]
        value, kind = target.name, target.type
        ask = RELATION_ASKS[key].format(x=described)
        claim = RELATION_SENTENCES[key][0].format(x=entity.name, y=value).rstrip(".")
    else:
        value, kind = entity.attr_text(key), key
        ask_text, claim_text = ATTRIBUTE_ASKS[(entity.type, key)]
        ask = ask_text.format(x=described)
        claim = claim_text.format(x=entity.name, y=value)
    return {
        "entity": entity.id,
        "name": entity.name,
        "key": key,
        "value": value,
        "kind": kind,
        "doc": world.doc_of[entity.id],
        "ask": ask,
        "claim": claim,
    }


def _wrong_value(
    world: World, fact: dict[str, Any], texts: str, nearby: list[Entity], rng: random.Random
) -> str:
    """A value contradicting `fact` that none of the task's articles names: an entity of the same type
    among those a search for the subject brings up (`nearby`) when there is one, else any of that type; a
    year or length moved by 3 to 40; another trade."""
    value, kind = fact["value"], fact["kind"]
    if kind in ("person", "city", "company", "university", "river"):
        pool = [e.name for e in nearby if e.type == kind]
        rest = sorted(e.name for e in world.entities.values() if e.type == kind)
        for name in [*rng.sample(pool, len(pool)), *rng.sample(rest, min(len(rest), 200))]:
            if name != value and name not in texts:
                return name
        raise ValueError(f"no wrong {kind} for {value}")
    if kind in ("occupation", "industry"):
        options = [o for o in (OCCUPATIONS if kind == "occupation" else INDUSTRIES) if o not in texts]
        return rng.choice(options)
    number = int(value.split()[0])
    for _ in range(100):
        wrong = number + rng.choice((-1, 1)) * rng.randint(3, 40)
        text = f"{wrong} km" if kind == "length_km" else str(wrong)
        if wrong > 0 and str(wrong) not in texts:
            return text
    raise ValueError(f"no wrong number for {value}")


def fact_pattern(name: str, value: str) -> str:
    """The regex of a sentence that names the entity and the value (in either order)."""
    n, v = re.escape(name), re.escape(value)
    return rf"{n}[^.\n]*{v}|{v}[^.\n]*{n}"


def cite_pattern(name: str, value: str, doc: str) -> str:
    """The regex of a sentence that states the fact (names the entity and the value) and cites `doc`
    before it ends."""
    n, v, d = re.escape(name), re.escape(value), re.escape(doc)
    return rf"(?:{n}[^.\n]*{v}|{v}[^.\n]*{n})[^.\n]*\\cite\{{(?:[^}}]*,)?\s*{d}\s*(?:,[^}}]*)?\}}"


def checklist(facts: list[dict[str, Any]], allowed: list[str]) -> list[ChecklistItem]:
    items: list[ChecklistItem] = []
    for i, fact in enumerate(facts, 1):
        items.append(
            ChecklistItem(
                id=f"fact{i}",
                text=f"States that {fact['claim']}",
                category="fact",
                check=Check(type="regex", value=fact_pattern(fact["name"], fact["value"]), ignore_case=False),
            )
        )
        items.append(
            ChecklistItem(
                id=f"cite{i}",
                text=f"Cites {fact['doc']} in the sentence that gives {fact['value']}",
                category="citation",
                check=Check(
                    type="regex",
                    value=cite_pattern(fact["name"], fact["value"], fact["doc"]),
                    ignore_case=False,
                ),
            )
        )
    for i, fact in enumerate(facts, 1):
        items.append(
            ChecklistItem(
                id=f"flaw{i}",
                text=f"Claims, wrongly, that {fact['wrong_claim']}",
                polarity="negative",
                category="flaw",
                check=Check(type="contains", value=fact["wrong"], ignore_case=False),
            )
        )
    items.append(
        ChecklistItem(
            id="fatal",
            text=f"Cites a source other than {', '.join(allowed)}",
            polarity="negative",
            fatal=True,
            category="fatal",
            check=Check(type="cites_outside", value=",".join(allowed)),
        )
    )
    return items


def sample_report_tasks(world: World, n_tasks: int, *, test_share: float) -> Iterator[Task]:
    """Report tasks on subjects of the world. A test task's subject is a test entity; a training task
    involves no test entity at all (subject, linked entity or value), so the split stays leak-free."""
    rng = random.Random(world.seed * 7919 + 2)
    split = {e: _split_of(e, world.seed, test_share) for e in world.entities}
    texts = {doc.id: doc.text for doc in world.documents}
    by_name = {e.name: e for e in world.entities.values()}
    near = _co_mentioned(world, by_name)
    profiles = {doc.id for doc in world.documents if doc.id.endswith("-profile")}
    subjects = sorted(
        (e for e in world.entities.values() if e.type in SUBJECT_TYPES and e.links), key=lambda e: e.id
    )
    rng.shuffle(subjects)
    emitted = 0
    for subject in subjects:
        if emitted >= n_tasks:
            return
        task = _report_task(world, subject, rng, texts, profiles, by_name, near, split, emitted)
        if task is None:
            continue
        emitted += 1
        yield task


def _report_task(
    world: World,
    subject: Entity,
    rng: random.Random,
    texts: dict[str, str],
    profiles: set[str],
    by_name: dict[str, Entity],
    near: dict[str, list[Entity]],
    split: dict[str, str],
    index: int,
) -> Task | None:
    own_keys = [k for k in sorted(subject.attrs) if (subject.type, k) in ATTRIBUTE_ASKS]
    own_keys += sorted(subject.links)
    facts = [_fact(world, subject, key, _the(subject)) for key in own_keys]
    rng.shuffle(facts)
    facts = facts[: rng.randint(2, min(4, len(facts)))]
    # then 1 to 3 linked entities' articles, one or two facts from each
    linked = [r for r in sorted(subject.links) if world.entities[subject.links[r]].type != subject.type]
    rng.shuffle(linked)
    wanted_docs = rng.randint(2, 4)
    for relation in linked:
        if len({f["doc"] for f in facts}) >= wanted_docs or len(facts) >= 6:
            break
        other = world.entities[subject.links[relation]]
        keys = [k for k in sorted(other.attrs) if (other.type, k) in ATTRIBUTE_ASKS]
        keys += [r for r in sorted(other.links) if other.links[r] != subject.id]
        if not keys:
            continue
        described = PHRASES[relation].format(x=_the(subject))
        for key in rng.sample(keys, min(len(keys), rng.randint(1, 2), 6 - len(facts))):
            facts.append(_fact(world, other, key, described))
    docs = list(dict.fromkeys(f["doc"] for f in facts))
    values = [f["value"] for f in facts]
    if not 3 <= len(facts) <= 6 or not 2 <= len(docs) <= 4 or len(set(values)) != len(values):
        return None
    involved = {subject.id, *(f["entity"] for f in facts)}
    involved |= {by_name[v].id for v in values if v in by_name}
    task_split = split[subject.id]
    if task_split == "train" and any(split[e] == "test" for e in involved):
        return None
    support = " ".join(texts[d] for d in docs)
    if any(v not in support for v in values):
        return None  # a value the articles phrase otherwise (never, as generated; kept as a guard)
    nearby = near.get(subject.name, [])
    taken = [support, *values]  # a wrong value is named nowhere else, and each fact gets its own
    for fact in facts:
        fact["wrong"] = _wrong_value(world, fact, " ".join(taken), nearby, rng)
        taken.append(fact["wrong"])
        fact["wrong_claim"] = fact["claim"].replace(fact["value"], fact["wrong"])
    allowed = [d for doc in docs for d in (doc, f"{doc}-profile") if d == doc or d in profiles]
    asks = [f["ask"] for f in facts]
    question = (
        f"Write a short cited report on {subject.name}: {'; '.join(asks[:-1])}; and {asks[-1]}. "
        "Cite the article each fact comes from."
    )
    return Task(
        id=f"world-{world.seed}-report-{index:06d}",
        question=question,
        type="research",
        checklist=checklist(facts, allowed),
        language="en",
        category="report",
        split=task_split,
        meta={
            "subject": {"entity": subject.id, "name": subject.name, "doc": world.doc_of[subject.id]},
            "facts": facts,
            "supporting_docs": docs,
            "allowed_sources": allowed,
        },
    )


def _the(entity: Entity) -> str:
    """How a sentence names the entity: "the Brin River", "the University of Kelm", "Zorburg"."""
    return f"the {entity.name}" if entity.type in ("river", "university") else entity.name


def _co_mentioned(world: World, by_name: dict[str, Entity]) -> dict[str, list[Entity]]:
    """For each entity name, the entities the same distractor chronicles name: what a search for it also
    brings up."""
    near: dict[str, list[Entity]] = {}
    for doc in world.documents:
        if doc.meta.get("distractor"):
            named = [entity for name, entity in by_name.items() if name in doc.text]
            for entity in named:
                near.setdefault(entity.name, []).extend(e for e in named if e is not entity)
    return near
