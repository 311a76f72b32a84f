"""The agent's atomic actions as tools: plan, search, open, read, answer.

Each tool's arguments are a pydantic model, which gives both its JSON schema (offered to the model) and
its validation (errors go back to the model as the tool result). A `Toolbox` holds one run's state:
the plan, the sources seen and opened, and the pages stored for reading by reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from dr_agent.fetch import Fetcher, FetchError
from dr_agent.search import SearchBackend, web_id
from dr_core.jsonl import describe_validation_error
from dr_core.records import Citation, Source, ToolCall, ToolIds

CITE = re.compile(r"\\cite\{([^}]*)\}")


class PlanArgs(BaseModel):
    """Write and revise your todo list. create: replace the list with `items`; add: append `items`;
    update: rewrite item `index` (1-based) with `text`; complete: mark item `index` done."""

    action: Literal["create", "add", "update", "complete"]
    items: list[str] = Field(default_factory=list)
    index: int | None = Field(None, ge=1)
    text: str | None = None


class SearchArgs(BaseModel):
    """Search for several queries at once. Results list an id, title, URL and snippet per hit."""

    queries: list[str] = Field(min_length=1, max_length=8)


class OpenArgs(BaseModel):
    """Open several search results (by their id) or URLs at once and read their text."""

    ids: list[str] = Field(min_length=1, max_length=5)


class ReadArgs(BaseModel):
    """Read more of a long opened page, from character `offset`."""

    ref: str
    offset: int = Field(0, ge=0)


class AnswerArgs(BaseModel):
    """Finish with your final answer or report. Cite opened sources as \\cite{id} after each claim."""

    text: str = Field(min_length=1)


TOOL_ARGS: dict[str, type[BaseModel]] = {
    "plan": PlanArgs,
    "search": SearchArgs,
    "open": OpenArgs,
    "read": ReadArgs,
    "answer": AnswerArgs,
}


def tool_schemas() -> list[dict[str, Any]]:
    """The tools in the OpenAI `tools` request shape."""
    schemas = []
    for name, model in TOOL_ARGS.items():
        parameters = model.model_json_schema()
        parameters.pop("title", None)
        parameters.pop("description", None)
        for prop in parameters.get("properties", {}).values():
            prop.pop("title", None)
        description = " ".join((model.__doc__ or "").split())
        schemas.append(
            {
                "type": "function",
                "function": {"name": name, "description": description, "parameters": parameters},
            }
        )
    return schemas


def cited_ids(text: str) -> list[str]:
    """The ids cited as \\cite{a} or \\cite{a, b}, in order of first appearance."""
    seen: dict[str, None] = {}
    for group in CITE.findall(text):
        for marker in group.split(","):
            if marker.strip():
                seen.setdefault(marker.strip(), None)
    return list(seen)


@dataclass
class ToolOutcome:
    text: str
    final: str | None = None
    error: bool = False
    # for search and open: the ids the text shows, by query (listed) and in order (opened)
    ids: ToolIds | None = None


@dataclass
class Toolbox:
    """One run's tools and their state."""

    backend: SearchBackend
    fetcher: Fetcher | None
    top_k: int = 5
    page_chars: int = 6000
    plan: list[tuple[str, bool]] = field(default_factory=list)
    sources: dict[str, Source] = field(default_factory=dict)
    opened: set[str] = field(default_factory=set)
    pages: dict[str, str] = field(default_factory=dict)
    searches: int = 0

    def call(self, call: ToolCall) -> ToolOutcome:
        """Run one tool call; every problem becomes an error message for the model, never an exception."""
        model = TOOL_ARGS.get(call.name)
        if model is None:
            return ToolOutcome(
                f"Error: unknown tool {call.name!r}. Tools: {', '.join(TOOL_ARGS)}.", error=True
            )
        if call.raw_arguments is not None:
            return ToolOutcome(
                f"Error: the arguments of {call.name} are not valid JSON: {call.raw_arguments[:200]!r}",
                error=True,
            )
        try:
            args = model.model_validate(call.arguments)
        except ValidationError as exc:
            return ToolOutcome(
                f"Error: bad arguments for {call.name}: {describe_validation_error(exc)}", error=True
            )
        return getattr(self, f"_{call.name}")(args)

    # ---- the tools -----------------------------------------------------------------------------

    def _plan(self, args: PlanArgs) -> ToolOutcome:
        if args.action == "create":
            self.plan = [(item, False) for item in args.items]
        elif args.action == "add":
            self.plan.extend((item, False) for item in args.items)
        else:
            if args.index is None or args.index > len(self.plan):
                return ToolOutcome(
                    f"Error: no plan item {args.index}; the plan has {len(self.plan)} items.", error=True
                )
            text, done = self.plan[args.index - 1]
            if args.action == "update":
                if not args.text:
                    return ToolOutcome("Error: update needs `text`.", error=True)
                self.plan[args.index - 1] = (args.text, done)
            else:
                self.plan[args.index - 1] = (text, True)
        lines = [f"{i}. [{'x' if done else ' '}] {text}" for i, (text, done) in enumerate(self.plan, 1)]
        return ToolOutcome("Plan:\n" + ("\n".join(lines) if lines else "(empty)"))

    def _search(self, args: SearchArgs) -> ToolOutcome:
        blocks = []
        listed: list[str] = []
        for query in args.queries:
            self.searches += 1
            try:
                hits = self.backend.search(query, self.top_k)
            except Exception as exc:  # a search service failing is news for the model, not a crash
                blocks.append(f"## {query}\nError: search failed: {type(exc).__name__}: {exc}")
                continue
            lines = [f"## {query}"]
            if not hits:
                lines.append("No results.")
            for hit in hits:
                self.sources.setdefault(
                    hit.id, Source(id=hit.id, url=hit.url, title=hit.title, snippet=hit.snippet)
                )
                where = f" <{hit.url}>" if hit.url else ""
                lines.append(f"[{hit.id}] {hit.title or '(untitled)'}{where}\n    {hit.snippet}")
                listed.append(hit.id)
            blocks.append("\n".join(lines))
        return ToolOutcome("\n\n".join(blocks), ids=ToolIds(listed=listed))

    def _resolve(self, ref: str) -> tuple[str, str | None, str]:
        """(source id, title, text) for a result id or a URL; raises FetchError."""
        doc = self.backend.get(ref)
        if doc is not None:
            self.sources.setdefault(doc.id, Source(id=doc.id, url=doc.url, title=doc.title))
            return doc.id, doc.title, doc.text
        source = self.sources.get(ref)
        url = source.url if source is not None and source.url else ref
        if not url.startswith(("http://", "https://")):
            raise FetchError(f"no document or search result with id {ref!r}")
        if self.fetcher is None:
            raise FetchError("opening web pages is turned off for this run")
        page = self.fetcher.fetch(url)
        source_id = source.id if source is not None else web_id(url)
        self.sources.setdefault(source_id, Source(id=source_id, url=url, title=page.title))
        return source_id, page.title, page.text

    def _open(self, args: OpenArgs) -> ToolOutcome:
        blocks = []
        opened: list[str] = []
        for ref in args.ids:
            try:
                source_id, title, text = self._resolve(ref)
            except FetchError as exc:
                blocks.append(f"# {ref}\nError: {exc}")
                continue
            self.opened.add(source_id)
            self.pages[source_id] = text
            blocks.append(f"# [{source_id}] {title or '(untitled)'}\n{self._window(source_id, 0)}")
            opened.append(source_id)
        return ToolOutcome("\n\n".join(blocks), ids=ToolIds(opened=opened))

    def _window(self, ref: str, offset: int) -> str:
        text = self.pages[ref]
        end = min(len(text), offset + self.page_chars)
        piece = text[offset:end]
        if end < len(text):
            piece += (
                f"\n[showing characters {offset}-{end} of {len(text)}; "
                f'call read with ref="{ref}" and offset={end} for more]'
            )
        return piece

    def _read(self, args: ReadArgs) -> ToolOutcome:
        if args.ref not in self.pages:
            return ToolOutcome(f"Error: {args.ref!r} has not been opened; open it first.", error=True)
        if args.offset >= len(self.pages[args.ref]):
            return ToolOutcome(
                f"Error: {args.ref!r} has only {len(self.pages[args.ref])} characters.", error=True
            )
        return ToolOutcome(self._window(args.ref, args.offset))

    def _answer(self, args: AnswerArgs) -> ToolOutcome:
        return ToolOutcome("Answer recorded.", final=args.text)

    # ---- citations -----------------------------------------------------------------------------

    def citations(self, text: str) -> list[Citation]:
        """Every \\cite{id} of `text`, mapped to its source; opened=False flags one never opened."""
        return [
            Citation(marker=marker, source=self.sources.get(marker), opened=marker in self.opened)
            for marker in cited_ids(text)
        ]
