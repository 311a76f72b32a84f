"""The record kinds that flow between dr's tools, each defined once here and versioned.

Every record has a stable `id` (given, or derived from its content), a `schema_version`, and free-form
`meta`. Unknown fields are rejected so a typo in a hand-written file is caught at the first tool.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """A nested part of a record: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class Record(Strict):
    """Base of every top-level record kind."""

    KIND: ClassVar[str] = "record"
    VERSION: ClassVar[int] = 1

    id: str = Field("", description="Stable identifier; derived from the content when absent.")
    schema_version: int = Field(
        1, ge=1, strict=True, description="Version of this kind's schema the record was written in."
    )
    meta: dict[str, Any] = Field(default_factory=dict, description="Free-form annotations carried along.")

    @model_validator(mode="before")
    @classmethod
    def _check_version(cls, data: Any) -> Any:
        if isinstance(data, dict):
            version = data.get("schema_version", 1)
            if isinstance(version, int) and version > cls.VERSION:
                raise ValueError(
                    f"schema_version {version} of {cls.KIND!r} is newer than this dr supports "
                    f"({cls.VERSION}); upgrade dr"
                )
        return data

    @model_validator(mode="after")
    def _derive_id(self) -> Record:
        if not self.id:
            # A content hash keeps the id stable across runs, so resume-by-id works on files without ids.
            body = self.model_dump(mode="json", exclude={"id"})
            digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
            self.id = f"{self.KIND}-{digest[:16]}"
        return self

    def to_json(self) -> bytes:
        """One JSONL line's worth of bytes, without the newline."""
        return orjson.dumps(self.model_dump(mode="json"))


# ---- sources, documents and reports -------------------------------------------------------------


class Source(Strict):
    """Something a report or an agent drew on: a web page or a document of a local corpus."""

    id: str
    url: str | None = None
    title: str | None = None
    snippet: str | None = None


class Document(Record):
    """A plain document: a corpus entry for the search index, or text for mid-training."""

    KIND: ClassVar[str] = "document"

    text: str
    title: str | None = None
    url: str | None = None
    language: str | None = None


class Report(Record):
    """A long-form research report in markdown, with the sources it cites."""

    KIND: ClassVar[str] = "report"

    text: str = Field(description="The report in markdown.")
    title: str | None = None
    task_id: str | None = Field(None, description="The task the report answers, when known.")
    sources: list[Source] = Field(default_factory=list)
    language: str | None = None


def is_drb_report(obj: dict[str, Any]) -> bool:
    """Whether a JSONL object is meant as a DeepResearch Bench report line: it has `article` or `prompt`
    and no `text` (the field a Document or Report has instead)."""
    return ("article" in obj or "prompt" in obj) and "text" not in obj


def drb_report(obj: dict[str, Any]) -> tuple[str, str | None, str]:
    """(id, prompt, article) of a report line as DeepResearch Bench ships it: {id, prompt, article}.

    ValueError (a file:line error where lines are read) when the article is not text (null, a number),
    the prompt neither text nor null, or the id neither text nor a whole number.
    """
    article, prompt, ident = obj.get("article"), obj.get("prompt"), obj.get("id", "")
    if "article" not in obj:
        raise ValueError(
            "field 'article' is missing: a DeepResearch Bench report line is {id, prompt, article} "
            "(or give a Document or Report with 'text')"
        )
    if not isinstance(article, str):
        raise ValueError(f"field 'article': expected the report's text, got {_json_type(article)}")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"field 'prompt': expected text, got {_json_type(prompt)}")
    if isinstance(ident, bool) or not isinstance(ident, str | int):
        raise ValueError(f"field 'id': expected text or a whole number, got {_json_type(ident)}")
    return str(ident), prompt, article


def _json_type(value: Any) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "text"}
    return names.get(type(value), "a list" if isinstance(value, list) else "an object")


# ---- checklists and tasks -----------------------------------------------------------------------


class Check(Strict):
    """A deterministic test of a report or answer, decided without any model."""

    type: Literal["contains", "regex", "exact", "cites", "cites_outside"] = Field(
        description="contains: substring; regex: re.search; exact: normalized equality with the answer; "
        "cites: the report cites the source with this id or URL; cites_outside: the report cites a source "
        "that is not one of the comma-separated ids or URLs in value."
    )
    value: str
    ignore_case: bool = True


class ChecklistItem(Strict):
    """One rubric item: a requirement to meet (positive) or a flaw to avoid (negative)."""

    id: str = ""
    text: str
    weight: float = Field(1.0, description="Importance; negative weights are allowed.")
    polarity: Literal["positive", "negative"] = "positive"
    kind: Literal["explicit", "implicit"] = "explicit"
    category: str | None = Field(None, description="A grouping such as a rubric dimension.")
    fatal: bool = Field(
        False, description="A flaw so grave that its presence makes the whole score 0 (flaws only)."
    )
    check: Check | None = None

    @model_validator(mode="after")
    def _flaws(self) -> ChecklistItem:
        # A negative weight on a requirement is a flaw: it is read as one (polarity negative, the weight's
        # size), so that it counts when present, as flaws do, not only when fully met.
        if self.weight < 0 and self.polarity == "positive":
            self.polarity = "negative"
            self.weight = -self.weight
        if self.fatal and self.polarity == "positive":
            raise ValueError(
                f"checklist item {self.id or self.text[:40]!r}: only a flaw (polarity negative) can be fatal"
            )
        return self


def _number_items(items: list[ChecklistItem]) -> None:
    """Give unnamed checklist items positional ids (c0, c1, ...) so verdicts can refer to them."""
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not item.id:
            item.id = f"c{index}"
        if item.id in seen:
            raise ValueError(f"checklist: item id {item.id!r} is used twice")
        seen.add(item.id)


class Task(Record):
    """A research or deep-search question, with whatever reference material is known for it."""

    KIND: ClassVar[str] = "task"

    question: str
    type: Literal["research", "deep_search"] = "research"
    answer: str | None = Field(None, description="Exact reference answer, for deep-search tasks.")
    answer_aliases: list[str] = Field(default_factory=list)
    checklist: list[ChecklistItem] = Field(default_factory=list)
    reference: Report | None = None
    language: str | None = None
    category: str | None = None
    split: str | None = None

    @model_validator(mode="after")
    def _ids(self) -> Task:
        _number_items(self.checklist)
        return self


class PlanStep(Strict):
    """One ordered sub-task of a plan."""

    title: str
    description: str = ""
    queries: list[str] = Field(default_factory=list, description="Search queries this step would run.")


class Plan(Record):
    """A query decomposed into ordered sub-tasks, as reverse-engineered from a report."""

    KIND: ClassVar[str] = "plan"

    query: str
    steps: list[PlanStep] = Field(default_factory=list)
    checklist: list[ChecklistItem] = Field(default_factory=list)
    report_id: str | None = Field(None, description="The report the plan was reconstructed from.")
    language: str | None = None

    @model_validator(mode="after")
    def _ids(self) -> Plan:
        _number_items(self.checklist)
        return self


# ---- messages and trajectories ------------------------------------------------------------------


class ToolCall(Strict):
    """One function call requested by the model."""

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    raw_arguments: str | None = Field(
        None, description="The arguments text as the model wrote it, kept only when it was not valid JSON."
    )


class ToolIds(Strict):
    """The ids a tool result showed the model, beside its text: search hits listed, documents opened."""

    listed: list[str] = Field(default_factory=list)
    opened: list[str] = Field(default_factory=list)


class Message(Strict):
    """One chat message in the OpenAI shape, with tool calls parsed."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = Field(None, description="For role=tool: the call this result answers.")
    name: str | None = None
    reasoning: str | None = Field(None, description="Reasoning text the server returned separately, if any.")
    ids: ToolIds | None = Field(
        None, description="For a search or open result: the ids it listed or opened (never sent to a model)."
    )


class Usage(Strict):
    """Token, request and cost accounting."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    cached_requests: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            requests=self.requests + other.requests,
            cached_requests=self.cached_requests + other.cached_requests,
            cost_usd=self.cost_usd + other.cost_usd,
        )


class Citation(Strict):
    """A citation marker in a final report and the source it points to."""

    marker: str = Field(description="The key used in the report, as in \\cite{marker}.")
    source: Source | None = None
    opened: bool = Field(True, description="False when the cited source was never opened during the run.")


class Trajectory(Record):
    """The full record of one agent run."""

    KIND: ClassVar[str] = "trajectory"

    task_id: str | None = None
    model: str | None = None
    messages: list[Message]
    tools: list[dict[str, Any]] = Field(default_factory=list, description="Tool JSON schemas offered.")
    final: str | None = Field(None, description="The final report or answer.")
    citations: list[Citation] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    wall_s: float = 0.0
    steps: int = 0
    stop_reason: str | None = Field(
        None,
        description="answered, step_budget, token_budget, time_budget, context_limit, no_progress (replies "
        "without a tool call that repeat or never end), error",
    )


# ---- judging ------------------------------------------------------------------------------------


class Verdict(Strict):
    """The judge's decision on one checklist item."""

    item_id: str
    verdict: Literal["met", "partially_met", "not_met", "abstain"] = Field(
        description="abstain: the judge could not rule (its reply was cut off, or the evidence may lie in "
        "a part of the response it was not shown); an abstention is never scored as met or not met."
    )
    rationale: str = ""
    votes: list[str] = Field(default_factory=list, description="Individual votes under self-consistency.")
    deterministic: bool = False


class Judgment(Record):
    """Per-item verdicts and the weighted score of one report, answer or trajectory."""

    KIND: ClassVar[str] = "judgment"

    task_id: str | None = None
    target_id: str = Field(description="The id of the judged trajectory or report.")
    verdicts: list[Verdict] = Field(default_factory=list)
    score: float | None = Field(
        ge=0.0, le=1.0, description="None when the judge abstained on an item: no score, rather than a guess."
    )
    mode: Literal["strict", "graded", "exact"] = "strict"
    fatal: bool = False
    judge: str | None = Field(None, description="The judge model, or 'deterministic'.")


class Comparison(Record):
    """A pairwise judgment of two reports for one task, over both presentation orders."""

    KIND: ClassVar[str] = "comparison"

    task_id: str | None = None
    a_id: str
    b_id: str
    winner: Literal["a", "b", "tie"]
    rationale: str = ""
    orders: list[Literal["a", "b", "tie"]] = Field(
        default_factory=list, description="The winner as seen in each presentation order."
    )
    judge: str | None = None


# ---- training -----------------------------------------------------------------------------------


class Example(Record):
    """A chat example ready for training: messages, the tools offered, and which turns carry loss."""

    KIND: ClassVar[str] = "example"

    messages: list[Message]
    tools: list[dict[str, Any]] = Field(default_factory=list)
    loss_turns: list[int] | None = Field(
        None, description="Indices of the messages that carry loss; absent means every assistant turn."
    )

    @model_validator(mode="after")
    def _check_loss_turns(self) -> Example:
        if self.loss_turns is not None:
            for index in self.loss_turns:
                if not 0 <= index < len(self.messages):
                    raise ValueError(
                        f"loss_turns: index {index} is outside the {len(self.messages)} messages"
                    )
                if self.messages[index].role != "assistant":
                    raise ValueError(
                        f"loss_turns: message {index} is a {self.messages[index].role!r} turn; "
                        "only assistant turns carry loss"
                    )
        return self

    def loss_indices(self) -> list[int]:
        """The message indices that carry loss."""
        if self.loss_turns is not None:
            return list(self.loss_turns)
        return [i for i, m in enumerate(self.messages) if m.role == "assistant"]


KINDS: dict[str, type[Record]] = {
    cls.KIND: cls for cls in (Document, Report, Task, Plan, Trajectory, Judgment, Comparison, Example)
}


def kind(name: str) -> type[Record]:
    """The record class called `name` (document, report, task, ...)."""
    from dr_core.errors import InputError

    try:
        return KINDS[name]
    except KeyError:
        raise InputError(f"unknown record kind {name!r}; known kinds: {', '.join(sorted(KINDS))}") from None


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of a record kind, with its kind and version stated."""
    cls = kind(name)
    schema = cls.model_json_schema()
    schema["$id"] = f"urn:dr:schema:{cls.KIND}:v{cls.VERSION}"
    schema["x-dr-kind"] = cls.KIND
    schema["x-dr-version"] = cls.VERSION
    return schema
