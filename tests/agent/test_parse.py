"""The fallback parser for tool calls written as <tool_call> text."""

from __future__ import annotations

from dr_agent.parse import parse_text_tool_calls


def test_parses_several_blocks_and_keeps_the_rest_of_the_text():
    text = (
        'I will search.\n<tool_call>{"name": "search", "arguments": {"queries": ["a"]}}</tool_call>\n'
        '<tool_call>\n{"name": "open", "arguments": "{\\"ids\\": [\\"d1\\"]}"}\n</tool_call>'
    )
    calls, rest, errors = parse_text_tool_calls(text)
    assert errors == []
    assert [(c.name, c.arguments) for c in calls] == [
        ("search", {"queries": ["a"]}),
        ("open", {"ids": ["d1"]}),
    ]
    assert rest == "I will search."
    assert len({c.id for c in calls}) == 2


def test_reports_unreadable_blocks():
    calls, _, errors = parse_text_tool_calls('<tool_call>{"name": "search", "arguments": {"q": </tool_call>')
    assert calls == [] and "tool call 1 is not valid JSON" in errors[0]
    calls, _, errors = parse_text_tool_calls('<tool_call>{"arguments": {}}</tool_call>')
    assert calls == [] and 'needs the form {"name": ...' in errors[0]
    calls, _, errors = parse_text_tool_calls('<tool_call>{"name": "search", "arguments": {}}')
    assert calls == [] and errors == ["tool call 1 is not closed with </tool_call>"]


def test_non_object_arguments_are_kept_raw_for_an_error_message():
    calls, _, errors = parse_text_tool_calls(
        '<tool_call>{"name": "open", "arguments": "not json"}</tool_call>'
    )
    assert errors == [] and calls[0].raw_arguments == "not json"


def test_text_without_calls_is_left_alone():
    assert parse_text_tool_calls("just an answer") == ([], "just an answer", [])
    assert parse_text_tool_calls(None) == ([], "", [])
