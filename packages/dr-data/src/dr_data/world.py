"""`dr data world`: a seeded synthetic encyclopedia and multi-hop questions over it.

Entities of five types (person, city, company, university, river) with attributes and functional typed
relations; one article per entity (plus some short profiles) written from templates with varied
phrasing; distractor documents that mention entities without stating their relations. Tasks follow
relation paths of 1 to 4 hops from an anchor of moderate degree (super-nodes are cut), and ask for the
name or an attribute of the entity at the end, so no single document answers them. Everything is drawn
from one `random.Random(seed)` in a fixed order: one seed, one byte-identical world.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dr_core.records import Check, ChecklistItem, Document, Task
from dr_data.world_defaults import DEFAULT_ENTITIES, DEFAULT_MAX_HOPS, DEFAULT_TEST_SHARE

TYPES = ("person", "city", "company", "university", "river")
ONSETS = "b br c ch d dr f g gr h j k kr l m n p pr qu r s st t tr v w z".split()
VOWELS = "a e i o u ae ai ou ei".split()
CODAS = "n r s l th nd rk st x m".split()
INDUSTRIES = [
    "shipbuilding",
    "textiles",
    "optics",
    "glassmaking",
    "printing",
    "salt mining",
    "clockmaking",
    "brewing",
]
OCCUPATIONS = [
    "chemist",
    "engineer",
    "cartographer",
    "merchant",
    "botanist",
    "architect",
    "composer",
    "physician",
]
CITY_SUFFIX = ["ford", "holm", "wick", "burg", "mere", "stad", "haven", "dale"]
COMPANY_SUFFIX = ["Works", "Company", "Foundry", "& Sons", "Industries", "Mills"]

# Relations: (name, from type, to type). Each is functional (one target per source), so a path has one end.
RELATIONS = {
    "born_in": ("person", "city"),
    "studied_at": ("person", "university"),
    "founded": ("person", "company"),
    "founded_by": ("company", "person"),
    "headquartered_in": ("company", "city"),
    "located_in": ("university", "city"),
    "lies_on": ("city", "river"),
}
# How a question phrases each relation, from the entity named so far to the next.
PHRASES = {
    "born_in": "the city where {x} was born",
    "studied_at": "the university {x} attended",
    "founded": "the company {x} founded",
    "founded_by": "the founder of {x}",
    "headquartered_in": "the city where {x} has its headquarters",
    "located_in": "the city in which {x} is located",
    "lies_on": "the river {x} lies on",
}
# What a question can ask of the final entity: its name, or an attribute.
ASKS = {
    "person": [("name", "Who is {x}?"), ("birth_year", "In what year was {x} born?")],
    "city": [("name", "What is {x}?"), ("founded_year", "In what year was {x} founded?")],
    "company": [("name", "What is {x}?"), ("founded_year", "In what year was {x} established?")],
    "university": [("name", "What is {x}?"), ("founded_year", "When was {x} founded?")],
    "river": [("name", "What is {x}?"), ("length_km", "How long, in kilometres, is {x}?")],
}


@dataclass
class Entity:
    id: str
    type: str
    name: str
    attrs: dict[str, Any]
    links: dict[str, str] = field(default_factory=dict)  # relation -> entity id

    def attr_text(self, key: str) -> str:
        value = self.attrs[key]
        return f"{value} km" if key == "length_km" else str(value)


@dataclass
class World:
    seed: int
    entities: dict[str, Entity]
    documents: list[Document]
    doc_of: dict[str, str]  # entity id -> the id of its main article

    def degree(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for entity in self.entities.values():
            for target in entity.links.values():
                counts[entity.id] += 1
                counts[target] += 1
        return counts


class _Names:
    """Unique pronounceable names from syllables."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int) -> str:
        rng = self.rng
        parts = [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)]
        return ("".join(parts) + rng.choice(CODAS)).capitalize()

    def unique(self, make: Any) -> str:
        for _ in range(1000):
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name
        raise RuntimeError("name space exhausted; lower --entities")


def slug(name: str) -> str:
    """The name in lowercase words joined by hyphens: "Sajan & Sons" becomes "sajan-sons"."""
    return "-".join(re.findall(r"[a-z0-9]+", name.lower()))


def build_world(seed: int = 0, n_entities: int = DEFAULT_ENTITIES) -> World:
    """Entities, relations and documents, all from one seed."""
    rng = random.Random(seed)
    names = _Names(rng)
    share = {"person": 0.4, "city": 0.2, "company": 0.2, "university": 0.1, "river": 0.1}
    entities: dict[str, Entity] = {}
    by_type: dict[str, list[Entity]] = defaultdict(list)
    for kind in TYPES:
        for i in range(max(3, int(n_entities * share[kind]))):
            entity_id = f"{kind}-{i:05d}"
            if kind == "person":
                name = names.unique(lambda: f"{names.word(2)} {names.word(rng.choice((2, 3)))}")
                attrs = {"birth_year": rng.randint(1780, 1950), "occupation": rng.choice(OCCUPATIONS)}
            elif kind == "city":
                name = names.unique(lambda: names.word(2) + rng.choice(CITY_SUFFIX))
                attrs = {"founded_year": rng.randint(900, 1800), "population": rng.randint(5, 900) * 1000}
            elif kind == "company":
                name = names.unique(lambda: f"{names.word(2)} {rng.choice(COMPANY_SUFFIX)}")
                attrs = {"founded_year": rng.randint(1800, 1990), "industry": rng.choice(INDUSTRIES)}
            elif kind == "university":
                name = names.unique(lambda: f"University of {names.word(3)}")
                attrs = {"founded_year": rng.randint(1200, 1950)}
            else:
                name = names.unique(lambda: f"{names.word(2)} River")
                attrs = {"length_km": rng.randint(40, 2400)}
            entity = Entity(entity_id, kind, name, attrs)
            entities[entity_id] = entity
            by_type[kind].append(entity)
    # Relations. Cities follow a Zipf-like popularity, so a few become super-nodes, as real graphs have.
    city_weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(by_type["city"]))]
    for city in by_type["city"]:
        city.links["lies_on"] = rng.choice(by_type["river"]).id
    for university in by_type["university"]:
        university.links["located_in"] = rng.choices(by_type["city"], city_weights)[0].id
    for person in by_type["person"]:
        person.links["born_in"] = rng.choices(by_type["city"], city_weights)[0].id
        if rng.random() < 0.7:
            person.links["studied_at"] = rng.choice(by_type["university"]).id
    founders = rng.sample(by_type["person"], min(len(by_type["person"]), len(by_type["company"])))
    for company, founder in zip(by_type["company"], founders, strict=False):
        company.links["founded_by"] = founder.id
        founder.links["founded"] = company.id
        company.links["headquartered_in"] = rng.choices(by_type["city"], city_weights)[0].id
        company.attrs["founded_year"] = max(company.attrs["founded_year"], founder.attrs["birth_year"] + 20)
    documents, doc_of = _write_documents(rng, entities)
    return World(seed, entities, documents, doc_of)


# ---- documents ----------------------------------------------------------------------------------

ARTICLE_OPENINGS = {
    "person": [
        "{name} (born {birth_year}) is a {occupation}.",
        "{name} was a {occupation}, born in {birth_year}.",
        "Born in {birth_year}, {name} made a name as a {occupation}.",
    ],
    "city": [
        "{name} is a city of about {population:,} people, founded in {founded_year}.",
        "Founded in {founded_year}, {name} today has some {population:,} inhabitants.",
    ],
    "company": [
        "{name} is a {industry} firm established in {founded_year}.",
        "Established in {founded_year}, {name} works in {industry}.",
    ],
    "university": [
        "The {name} was founded in {founded_year}.",
        "{name}, founded in {founded_year}, is a public university.",
    ],
    "river": [
        "The {name} is {length_km} km long.",
        "At {length_km} km, the {name} is a long river.",
    ],
}
RELATION_SENTENCES = {
    "born_in": [
        "{x} was born in {y}.",
        "{x}'s birthplace is {y}.",
        "{x} grew up in {y}, the city of their birth.",
    ],
    "studied_at": [
        "{x} studied at the {y}.",
        "{x} is an alumnus of the {y}.",
        "{x} was educated at the {y}.",
    ],
    "founded": ["{x} founded {y}.", "In time, {x} established {y}."],
    "founded_by": ["{x} was founded by {y}.", "Its founder was {y}."],
    "headquartered_in": [
        "{x} has its headquarters in {y}.",
        "{x} is based in {y}.",
        "The head office of {x} is in {y}.",
    ],
    "located_in": ["The {x} is located in {y}.", "The campus of the {x} lies in {y}."],
    "lies_on": ["{x} lies on the {y}.", "{x} was built along the {y}.", "The {y} flows through {x}."],
}
FILLER = [
    "Local archives hold letters and ledgers from this period.",
    "Several accounts of its early years disagree on minor details.",
    "A small museum documents this history.",
    "Travel writers of the time described it at length.",
    "Its records were partly lost in a fire and later reconstructed.",
]
DISTRACTORS = [
    "In {year}, a delegation including {a} and representatives of {b} met to discuss trade along the {c}.",
    "A festival in {b} featured an exhibition on {a} and the history of the {c}.",
    "Newspapers in {year} compared {a} with {b}, though the two had little in common.",
]


def _write_documents(
    rng: random.Random, entities: dict[str, Entity]
) -> tuple[list[Document], dict[str, str]]:
    documents: list[Document] = []
    doc_of: dict[str, str] = {}
    slugs: set[str] = set()
    for entity in entities.values():
        fields = {"name": entity.name, **entity.attrs}
        sentences = [rng.choice(ARTICLE_OPENINGS[entity.type]).format(**fields)]
        for relation in sorted(entity.links):
            target = entities[entity.links[relation]]
            sentences.append(rng.choice(RELATION_SENTENCES[relation]).format(x=entity.name, y=target.name))
        sentences += rng.sample(FILLER, 2)
        # the id is the name as a URL would spell it, as most sites' are: an agent copies it from a search
        # result as it copies a name (a serial number's run of digits is easy to get wrong)
        doc_id = slug(entity.name)
        if doc_id in slugs:
            doc_id = f"{doc_id}-{entity.id}"
        slugs.add(doc_id)
        documents.append(
            Document(id=doc_id, title=entity.name, text=" ".join(sentences), meta={"entity": entity.id})
        )
        doc_of[entity.id] = doc_id
        if rng.random() < 0.2:
            # a short profile repeating one fact in other words: more than one way to find it
            repeated = rng.choice(sorted(entity.links)) if entity.links else None
            text = rng.choice(ARTICLE_OPENINGS[entity.type]).format(**fields)
            if repeated:
                target = entities[entity.links[repeated]]
                text += " " + rng.choice(RELATION_SENTENCES[repeated]).format(x=entity.name, y=target.name)
            documents.append(
                Document(
                    id=f"{doc_id}-profile",
                    title=f"{entity.name} (profile)",
                    text=text,
                    meta={"entity": entity.id},
                )
            )
    pool = sorted(entities)
    for i in range(len(entities) // 4):
        a, b, c = (entities[rng.choice(pool)] for _ in range(3))
        text = rng.choice(DISTRACTORS).format(year=rng.randint(1800, 1990), a=a.name, b=b.name, c=c.name)
        documents.append(
            Document(id=f"distractor-{i:05d}", title=f"Chronicle {i}", text=text, meta={"distractor": True})
        )
    return documents, doc_of


# ---- tasks --------------------------------------------------------------------------------------


def _split_of(entity_id: str, seed: int, test_share: float) -> str:
    # a hash independent of generation order: the same entity is in the same split for a seed
    import hashlib

    value = int(hashlib.sha256(f"{seed}:{entity_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if value < test_share else "train"


def sample_tasks(
    world: World,
    n_tasks: int,
    *,
    max_hops: int = DEFAULT_MAX_HOPS,
    test_share: float = DEFAULT_TEST_SHARE,
    super_node_degree: int | None = None,
) -> Iterator[Task]:
    """Multi-hop tasks from random walks along functional relations; test tasks involve test entities
    only at their answer, training tasks none at all, and no training answer equals a test answer."""
    rng = random.Random(world.seed * 7919 + 1)
    degree = world.degree()
    values = sorted(degree.values())
    cap = super_node_degree or max(4, values[int(len(values) * 0.95)] if values else 4)
    anchors = [e for e in world.entities.values() if 1 <= degree[e.id] <= cap and e.links]
    split = {e: _split_of(e, world.seed, test_share) for e in world.entities}
    about: dict[str, list[str]] = defaultdict(list)  # entity -> texts of its documents
    for doc in world.documents:
        if "entity" in doc.meta:
            about[doc.meta["entity"]].append(doc.text)
    seen: set[tuple[str, ...]] = set()
    drafts: list[tuple[Task, str]] = []
    attempts = 0
    while len(drafts) < n_tasks * 2 and attempts < n_tasks * 50:
        attempts += 1
        anchor = rng.choice(anchors)
        hops = rng.randint(1, max_hops)
        path = [anchor]
        relations: list[str] = []
        for _ in range(hops):
            options = [
                r for r in sorted(path[-1].links) if r not in relations[-1:] and not _backtrack(r, relations)
            ]
            options = [r for r in options if degree[path[-1].links[r]] <= cap or len(relations) == hops - 1]
            if not options:
                break  # too short for the drawn hop count: drawn again below
            relation = rng.choice(options)
            relations.append(relation)
            path.append(world.entities[path[-1].links[relation]])
        if len(relations) != hops or len({e.id for e in path}) != len(path):
            continue
        end = path[-1]
        ask, template = rng.choice(ASKS[end.type])
        key = (anchor.id, *relations, ask)
        if key in seen:
            continue
        seen.add(key)
        described = anchor.name
        for relation in relations:
            described = PHRASES[relation].format(x=described)
        question = template.format(x=described)
        question = question[0].upper() + question[1:]
        answer = end.name if ask == "name" else end.attr_text(ask)
        if len(relations) > 1 and any(answer in text for text in about[anchor.id]):
            continue  # the anchor's own article happens to name the answer: not a multi-hop question
        aliases = [str(end.attrs[ask])] if ask == "length_km" else []
        middle = [e.id for e in path[:-1]]
        if any(split[e] == "test" for e in middle):
            continue
        task_split = split[end.id]
        checklist = [
            ChecklistItem(
                id=f"hop{i + 1}",
                text=f"Identifies {path[i + 1].name} as {PHRASES[r].format(x=path[i].name)}",
                check=Check(type="contains", value=path[i + 1].name),
            )
            for i, r in enumerate(relations)
            if i < len(relations) - 1 or ask != "name"
        ]
        checklist.append(
            ChecklistItem(id="answer", text=f"Answers {answer}", check=Check(type="exact", value=answer))
        )
        task = Task(
            id=f"world-{world.seed}-{len(drafts):06d}",
            question=question,
            type="deep_search",
            answer=answer,
            answer_aliases=aliases,
            checklist=checklist,
            language="en",
            category=f"{len(relations)}-hop",
            split=task_split,
            meta={
                "hops": [
                    {"entity": e.id, "name": e.name, "doc": world.doc_of[e.id], "relation": r}
                    for e, r in zip(path, [*relations, None], strict=True)
                ],
                "ask": ask,
                "supporting_docs": [world.doc_of[e.id] for e in path],
            },
        )
        drafts.append((task, task_split))
    from dr_judge.answers import normalize

    test_answers = {normalize(t.answer) for t, s in drafts if s == "test" and t.answer}
    emitted = 0
    for task, task_split in drafts:
        if emitted >= n_tasks:
            break
        if task_split == "train" and task.answer and normalize(task.answer) in test_answers:
            continue  # a training task must never teach a test answer
        emitted += 1
        yield task


def _backtrack(relation: str, taken: list[str]) -> bool:
    """founded then founded_by (or back) returns to where the path was."""
    pairs = {("founded", "founded_by"), ("founded_by", "founded")}
    return bool(taken) and (taken[-1], relation) in pairs
