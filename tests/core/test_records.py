"""Record kinds: validation, stable ids, versions, schemas."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dr_core.errors import InputError
from dr_core.records import KINDS, Example, Message, Report, Task, json_schema, kind


def test_ids_are_derived_from_content_and_stable():
    a = Task(question="Who founded Velmora?")
    b = Task.model_validate({"question": "Who founded Velmora?"})
    c = Task(question="Who founded Ostrava?")
    assert a.id == b.id and a.id.startswith("task-")
    assert a.id != c.id
    assert Task(id="given", question="x").id == "given"
    # a record read back from its own output keeps its id
    assert Task.model_validate_json(a.to_json()).id == a.id


def test_newer_schema_versions_are_refused_with_advice():
    with pytest.raises(ValidationError, match="schema_version 2 of 'task' is newer than this dr supports"):
        Task.model_validate({"question": "q", "schema_version": 2})
    for version in ("99", "1", 1.0, True):  # a version is a whole number, never text that looks like one
        with pytest.raises(ValidationError, match="schema_version"):
            Task.model_validate({"question": "q", "schema_version": version})


def test_unknown_fields_are_rejected_and_meta_carries_extras():
    with pytest.raises(ValidationError, match="qestion"):
        Task.model_validate({"question": "q", "qestion": "typo"})
    assert Task(question="q", meta={"source": "x"}).meta == {"source": "x"}


def test_checklist_items_get_positional_ids_and_duplicates_fail():
    task = Task.model_validate(
        {"question": "q", "checklist": [{"text": "a"}, {"id": "k", "text": "b"}, {"text": "c"}]}
    )
    assert [item.id for item in task.checklist] == ["c0", "k", "c2"]
    with pytest.raises(ValidationError, match="item id 'k' is used twice"):
        Task.model_validate(
            {"question": "q", "checklist": [{"id": "k", "text": "a"}, {"id": "k", "text": "b"}]}
        )


def test_example_loss_turns_default_to_assistant_turns_and_must_point_at_them():
    messages = [
        Message(role="system", content="s"),
        Message(role="user", content="u"),
        Message(role="assistant", content="a1"),
        Message(role="tool", content="r", tool_call_id="c"),
        Message(role="assistant", content="a2"),
    ]
    assert Example(messages=messages).loss_indices() == [2, 4]
    assert Example(messages=messages, loss_turns=[4]).loss_indices() == [4]
    with pytest.raises(ValidationError, match="message 3 is a 'tool' turn"):
        Example(messages=messages, loss_turns=[3])
    with pytest.raises(ValidationError, match="index 9 is outside the 5 messages"):
        Example(messages=messages, loss_turns=[9])


def test_every_kind_has_a_schema_and_round_trips():
    samples = {
        "document": {"text": "t"},
        "report": {"text": "# R", "sources": [{"id": "s1", "url": "http://x"}]},
        "task": {"question": "q", "checklist": [{"text": "i", "check": {"type": "regex", "value": "a+"}}]},
        "plan": {"query": "q", "steps": [{"title": "s", "queries": ["a"]}]},
        "trajectory": {"messages": [{"role": "user", "content": "q"}], "final": "ans"},
        "judgment": {"target_id": "t", "score": 0.5, "verdicts": [{"item_id": "c0", "verdict": "met"}]},
        "comparison": {"a_id": "a", "b_id": "b", "winner": "tie"},
        "example": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    }
    assert set(samples) == set(KINDS)
    for name, data in samples.items():
        cls = kind(name)
        record = cls.model_validate(data)
        assert cls.model_validate_json(record.to_json()) == record
        schema = json_schema(name)
        assert schema["x-dr-kind"] == name and schema["x-dr-version"] == cls.VERSION
        assert set(schema["properties"]) == set(cls.model_fields)


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(
        InputError, match="unknown record kind 'checklist'; known kinds: comparison, document"
    ):
        kind("checklist")


def test_judgment_scores_are_bounded():
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        kind("judgment").model_validate({"target_id": "t", "score": 1.5})
    assert Report(text="x").sources == []
