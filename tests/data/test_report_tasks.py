"""Report tasks of the world: each checklist item has a true verdict decided by its rule, the oracle's
report meets every requirement and no flaw, and each perturbation breaks exactly what it says."""

from __future__ import annotations

import json
import random
import re

import pytest

from dr_core.records import Report, Task
from dr_data.judge_data import PERTURBATIONS, oracle_report, perturb, reports, true_verdict
from dr_data.report_tasks import sample_report_tasks
from dr_data.world import _split_of, build_world, sample_tasks
from dr_judge.judge import ChecklistJudge
from support import must
from support.cli import dr, dr_world


@pytest.fixture(scope="module")
def world():
    return build_world(seed=5, n_entities=600)


@pytest.fixture(scope="module")
def tasks(world):
    return list(sample_report_tasks(world, 120, test_share=0.2))


def verdicts(task: Task, text: str) -> dict[str, str]:
    return {item.id: true_verdict(item, text) for item in task.checklist}


def test_report_tasks_ask_three_to_six_facts_from_two_to_four_articles(tasks):
    assert len(tasks) == 120
    for task in tasks:
        facts = task.meta["facts"]
        assert 3 <= len(facts) <= 6 and 2 <= len(task.meta["supporting_docs"]) <= 4
        kinds = [item.category for item in task.checklist]
        assert kinds.count("fact") == kinds.count("citation") == kinds.count("flaw") == len(facts)
        assert kinds.count("fatal") == 1 and all(item.check is not None for item in task.checklist)
        assert task.type == "research" and task.category == "report" and task.answer is None


def test_the_oracle_report_meets_every_requirement_and_no_flaw(tasks):
    judge = ChecklistJudge(None)
    for task in tasks:
        text = oracle_report(task)
        truth = verdicts(task, text)
        for item in task.checklist:
            assert truth[item.id] == ("met" if item.polarity == "positive" else "not_met"), (task.id, item)
        assert judge.judge(task, text, "oracle").score == 1.0


def test_each_perturbation_breaks_what_it_names_and_nothing_else(tasks):
    rng = random.Random(0)
    seen = set()
    for task in tasks:
        oracle = verdicts(task, oracle_report(task))
        for kind in PERTURBATIONS:
            text = perturb(task, kind, rng)
            if text is None:
                assert kind in ("swap_entity", "change_number")
                continue
            seen.add(kind)
            changed = {i for i, v in verdicts(task, text).items() if v != oracle[i]}
            facts = {f"fact{n}" for n in range(1, len(task.meta["facts"]) + 1)}
            if kind == "drop_fact":
                # the fact and its citation go; nothing else
                assert len(changed) == 2 and {i[:4] for i in changed} == {"fact", "cite"}
            elif kind in ("swap_entity", "change_number"):
                # the fact is no longer stated, its sentence no longer cites for it, and its flaw appears
                (n,) = {i[-1] for i in changed}
                assert changed == {f"fact{n}", f"cite{n}", f"flaw{n}"} and f"fact{n}" in facts
            elif kind == "fabricate_citation":
                assert "fatal" in changed and len(changed) == 2
                assert ChecklistJudge(None).judge(task, text, "x").score == 0.0  # fatal
            else:  # move_citation: only the citation of that fact
                assert len(changed) == 1 and next(iter(changed)).startswith("cite")
    assert seen == set(PERTURBATIONS)


def test_the_split_is_leak_free_and_question_tasks_are_unchanged(world, tasks):
    split = {e: _split_of(e, world.seed, 0.2) for e in world.entities}
    by_name = {e.name: e.id for e in world.entities.values()}
    assert {t.split for t in tasks} == {"train", "test"}
    for task in tasks:
        involved = {task.meta["subject"]["entity"], *(f["entity"] for f in task.meta["facts"])}
        involved |= {by_name[f["value"]] for f in task.meta["facts"] if f["value"] in by_name}
        assert task.split == split[task.meta["subject"]["entity"]]
        if task.split == "train":
            assert all(split[e] == "train" for e in involved), task.id
    # report tasks draw from their own generator: the question tasks of a seed are what they were
    again = build_world(seed=5, n_entities=600)
    assert [t.model_dump() for t in sample_tasks(again, 50)] == [
        t.model_dump() for t in sample_tasks(world, 50)
    ]
    assert [t.model_dump() for t in sample_report_tasks(again, 120, test_share=0.2)] == [
        t.model_dump() for t in tasks
    ]


def test_dr_data_world_writes_report_tasks_and_dr_data_judge_balances_examples(tmp_path):
    out = tmp_path / "w"
    dr_world(out, 600, 20, 60)
    train = [json.loads(line) for line in (out / "reports-train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (out / "reports-test.jsonl").read_text().splitlines()]
    assert len(train) + len(test) == 60 and all(t["split"] == "test" for t in test)
    examples = tmp_path / "judge.jsonl"
    result = dr(
        "data", "judge", out / "reports-train.jsonl", out / "train.jsonl", "--limit", "160",
        "--items-per-call", "1", "--reports", tmp_path / "reports.jsonl", "-o", examples,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in examples.read_text().splitlines()]
    assert len(rows) == 160
    groups: dict[str, int] = {}
    kinds = {"fact": "fact", "cite": "citation", "flaw": "flaw", "fata": "fatal"}
    for row in rows:
        (item_id,), (verdict,) = row["meta"]["items"], row["meta"]["verdicts"]
        key = f"{kinds[item_id[:4]]}:{verdict}"
        groups[key] = groups.get(key, 0) + 1
        (reply,) = json.loads(row["messages"][-1]["content"])["verdicts"]
        assert (reply["id"], reply["verdict"]) == (item_id, verdict) and reply["rationale"]
    # true and false verdicts balanced within each kind of item: 8 groups of 20
    assert groups == {
        f"{k}:{v}": 20 for k in ("fact", "citation", "flaw", "fatal") for v in ("met", "not_met")
    }
    # by default one example per report, all its items in one reply, balanced over the perturbation mix
    whole = tmp_path / "whole.jsonl"
    result = dr(
        "data", "judge", out / "reports-train.jsonl", "--max-perturbations", "2", "--limit", "44", "-o", whole
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in whole.read_text().splitlines()]
    mixes: dict[str, int] = {}
    for row in rows:
        mixes[row["meta"]["perturbation"]] = mixes.get(row["meta"]["perturbation"], 0) + 1
        assert len(row["meta"]["items"]) == len(json.loads(row["messages"][-1]["content"])["verdicts"]) > 8
    assert len(rows) == 44 and max(mixes.values()) - min(mixes.values()) <= 1
    assert any("+" in mix for mix in mixes)  # two perturbations in one report
    written = [
        Report.model_validate_json(line) for line in (tmp_path / "reports.jsonl").read_text().splitlines()
    ]
    assert {r.meta["perturbation"] for r in written} == {"none", *PERTURBATIONS}
    assert len(written) == 5 * len(train)  # the oracle's and four perturbed per task


def test_reports_of_a_task_name_their_perturbation(tasks):
    made = list(reports(tasks[0], 4, random.Random(1)))
    assert made[0].meta["perturbation"] == "none" and made[0].text == oracle_report(tasks[0])
    assert len({r.id for r in made}) == len(made) == 5


def test_the_oracle_researches_report_tasks_and_finishes_with_its_cited_report(tmp_path):
    world = tmp_path / "w"
    dr_world(world, 500, 5, 12)
    assert dr("data", "index", world / "corpus.jsonl", "-i", world / "index").returncode == 0
    out = tmp_path / "traj.jsonl"
    result = dr("data", "trajectories", world / "reports-train.jsonl", "--index", world / "index", "-o", out)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    tasks = {
        t.id: t
        for t in map(Task.model_validate_json, (world / "reports-train.jsonl").read_text().splitlines())
    }
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(t["task_id"] for t in kept) == sorted(tasks)
    for trajectory in kept:
        task = tasks[trajectory["task_id"]]
        assert trajectory["final"] == oracle_report(task) and trajectory["meta"]["score"] == 1.0
        opened = {doc for m in trajectory["messages"] if m.get("ids") for doc in m["ids"]["opened"]}
        assert set(task.meta["supporting_docs"]) <= opened  # every cited article was opened first
        assert all(c["opened"] for c in trajectory["citations"])
    result = dr("data", "sft", out, "-o", tmp_path / "sft.jsonl")
    assert result.returncode == 0, result.stderr


def test_the_evidence_a_judge_learns_to_write_first_decides_the_verdict(tasks):
    """The rationale of a judge example names what the report gives for the item's fact; the verdict
    follows from it and the item alone, as the rules decide it."""
    from dr_data.judge_data import examples
    from dr_judge.judge import RATIONALE_CHARS

    rng = random.Random(2)
    for task in tasks[:40]:
        facts = task.meta["facts"]
        allowed = set(task.meta["allowed_sources"])
        for report in reports(task, 4, rng, most=3):
            (example, _), *_ = list(examples(task, report))
            reply = json.loads(must(example.messages[-1].content))["verdicts"]
            for entry in reply:
                item, why = entry["id"], entry["rationale"]
                assert len(why) <= RATIONALE_CHARS  # a schema-constrained reply would cut it
                if item == "fatal":
                    # each cited article marked allowed or not: the verdict is whether any is not
                    marks = re.findall(r"([\w-]+) \((allowed|not allowed)\)", why)
                    assert marks or why == "It cites nothing." or "allowed sources" in why
                    assert all((key in allowed) == (mark == "allowed") for key, mark in marks)
                    decided = "met" if "not allowed" in why else "not_met"
                else:
                    given, asked = why.split("; the item ")
                    n = int(item[4:]) - 1
                    value, doc, wrong = facts[n]["value"], facts[n]["doc"], facts[n]["wrong"]
                    gives = given.removeprefix("The report gives ")
                    if item.startswith("cite"):
                        assert asked == f"asks {value} citing {doc}."
                        decided = "met" if gives == f"{value} citing {doc}" else "not_met"
                    else:
                        said = value if item.startswith("fact") else wrong
                        assert asked == f"says {said}."
                        decided = "met" if gives == said else "not_met"
                assert decided == entry["verdict"], (report.id, entry)
