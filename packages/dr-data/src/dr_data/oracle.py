"""The oracle teacher: an expert policy for world tasks that knows the graph and acts only through the
agent's real tools. It stands where the LLM client stands, so the agent loop, the tools, the search index
and the Trajectory record are the real ones; it only decides the next action from what the tools showed.
"""

from __future__ import annotations

import re
from typing import Any

from dr_core.llm import ChatResult, LLMConfig
from dr_core.records import Message, Task, ToolCall, Usage
from dr_data.judge_data import is_report_task, oracle_report
from dr_data.world import PHRASES

SENTENCE = re.compile(r"(?<=[.!?])\s+")
ASKED = {"birth_year": "birth year", "founded_year": "founding year", "length_km": "length", "name": "name"}


class OracleTeacher:
    """Answers `chat()` like an LLM client, for the world tasks it was given (matched by question)."""

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = {task.question: task for task in tasks}
        self.config = LLMConfig(model="oracle", base_url="oracle://world")

    def chat(self, messages: list[Message], **_: Any) -> ChatResult:
        question = next(m.content for m in messages if m.role == "user")
        task = self.tasks.get(question or "")
        if task is None or not (task.meta.get("hops") or is_report_task(task)):
            message = Message(
                role="assistant",
                content="I have no path for this question.",
                tool_calls=[
                    ToolCall(
                        id="call_giveup",
                        name="answer",
                        arguments={"text": "I could not determine the answer."},
                    )
                ],
            )
            return ChatResult(message=message, finish_reason="tool_calls", usage=Usage())
        content, calls = self._decide(task, messages)
        # ids from this conversation's own turn count, so that runs on several threads at once give the
        # same trajectories as one at a time
        turn = 1 + sum(m.role == "assistant" for m in messages)
        ids = [ToolCall(id=f"call_{turn}_{i}", name=n, arguments=a) for i, (n, a) in enumerate(calls)]
        return ChatResult(
            message=Message(role="assistant", content=content, tool_calls=ids),
            finish_reason="tool_calls",
            usage=Usage(),
        )

    def _decide(self, task: Task, messages: list[Message]) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
        report = is_report_task(task)
        # the articles to open, in order: a question's hops, or the articles a report's facts come from
        hops = task.meta["hops"] if not report else _report_targets(task)
        assistant = [m for m in messages if m.role == "assistant"]
        if not assistant:
            items = []
            if report:
                items = [f"Read the article on {hop['name']}" for hop in hops]
                items.append("Write the report: one sentence per fact, citing its article")
                note = f"The report needs {len(task.meta['facts'])} facts from {len(hops)} articles."
            else:
                for i, hop in enumerate(hops[:-1]):
                    subject = hop["name"] if i == 0 else "it"
                    items.append(f"Find {PHRASES[hop['relation']].format(x=subject)}")
                items.append(f"Confirm the {ASKED[task.meta['ask']]} in its own article and answer")
                note = f"The question chains {len(hops) - 1} relations; I will follow them one by one."
            plan = ("plan", {"action": "create", "items": items})
            first = ("search", {"queries": [hops[0]["name"]]})
            return note, [plan, first]
        tool_messages = [m for m in messages if m.role == "tool"]
        results = [m.content or "" for m in tool_messages]
        opened = {doc for m in tool_messages if m.ids is not None for doc in m.ids.opened}
        done = 0
        while done < len(hops) and hops[done]["doc"] in opened:
            done += 1
        if done == len(hops):
            if report:
                return "I have opened every article the facts come from; writing the report.", [
                    ("answer", {"text": oracle_report(task)})
                ]
            quote = _evidence(results[-1:], hops[-1]["doc"], task.answer or "")
            return f"{quote}Every step is supported by an article I opened.", [
                ("answer", {"text": self._answer(task)})
            ]
        target = hops[done]
        last = results[-1] if results else ""
        last_ids = tool_messages[-1].ids if tool_messages else None
        listed = last_ids.listed if last_ids is not None else []
        actions: list[tuple[str, dict[str, Any]]] = []
        if done and last_ids is not None and last_ids.opened:
            actions.append(("plan", {"action": "complete", "index": done}))
        if target["doc"] in listed:
            note = f"The search found the article on {target['name']}; opening it."
            return note, [*actions, ("open", {"ids": [target["doc"]]})]
        searched = [
            m
            for m in assistant
            if any(c.name == "search" and target["name"] in str(c.arguments) for c in m.tool_calls)
        ]
        if len(searched) >= 2:
            return f"Searching did not surface {target['name']} directly; opening its article by id.", [
                *actions,
                ("open", {"ids": [target["doc"]]}),
            ]
        query = target["name"] if not searched else f'"{target["name"]}" {target["name"].split()[0]}'
        quote = _evidence([last], hops[done - 1]["doc"], target["name"]) if done and not report else ""
        return f"{quote}Now I need to look up {target['name']}.", [*actions, ("search", {"queries": [query]})]

    @staticmethod
    def _answer(task: Task) -> str:
        hops = task.meta["hops"]
        lines = [f"Answer: {task.answer}", ""]
        for i in range(len(hops) - 1):
            hop, following = hops[i], hops[i + 1]
            said = PHRASES[hop["relation"]].format(x=hop["name"])
            lines.append(f"- {said[0].upper()}{said[1:]} is {following['name']} \\cite{{{hop['doc']}}}.")
        last = hops[-1]
        if task.meta["ask"] != "name":
            lines.append(
                f"- The {ASKED[task.meta['ask']]} of {last['name']} is {task.answer} \\cite{{{last['doc']}}}."
            )
        else:
            lines.append(f"- The article on {last['name']} confirms it \\cite{{{last['doc']}}}.")
        return "\n".join(lines)


def _report_targets(task: Task) -> list[dict[str, str]]:
    """The articles a report task's facts come from, in order, with the name each is titled by."""
    targets: dict[str, str] = {}
    for fact in task.meta["facts"]:
        targets.setdefault(fact["doc"], fact["name"])
    return [{"doc": doc, "name": name} for doc, name in targets.items()]


def _evidence(results: list[str], doc: str, needle: str) -> str:
    """The sentence of the opened article `doc` that states `needle`, quoted: a teacher that copies its
    evidence word for word before using it shows the student where a fact comes from (and a small model
    copies a whole sentence far more reliably than it picks one name out of a page). Empty if `doc` was
    not opened or no sentence names `needle`."""
    for text in results:
        if text.startswith(f"# [{doc}]") and "\n" in text:
            for sentence in SENTENCE.split(text.split("\n", 1)[1].strip()):
                if needle in sentence:
                    return f'The article says: "{sentence}" '
    return ""
