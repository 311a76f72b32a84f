"""The skeleton of every JSONL command: read records, skip what is done, write results, keep rejects.

with Pipe(inputs, output, on_error=..., resume=...) as pipe:
    for task in pipe.records(Task):
        pipe.write(solve(task))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from dr_core.jsonl import (
    STDIO,
    OnError,
    Origin,
    RecordWriter,
    RejectWriter,
    default_key,
    display_name,
    read_located,
)
from dr_core.log import logger, progress

R = TypeVar("R", bound=BaseModel)


def default_rejects_path(inputs: Sequence[str], output: str) -> Path:
    """Beside the output file; else beside the single input file; else in the working directory."""
    if output != STDIO:
        return Path(output + ".rejects.jsonl")
    files = [i for i in inputs if i != STDIO]
    if len(files) == 1 and len(inputs) == 1:
        return Path(files[0] + ".rejects.jsonl")
    return Path("dr-rejects.jsonl")


class Pipe:
    """Input records in, output records out, with --on-error, --rejects and --resume handled once."""

    def __init__(
        self,
        inputs: Sequence[str] = (STDIO,),
        output: str = STDIO,
        *,
        on_error: OnError = "fail",
        rejects: str | None = None,
        resume: bool = False,
        output_key: Callable[[dict[str, Any]], Any] = default_key,
        group_size: Callable[[dict[str, Any]], int] | None = None,
        resumable: bool = True,
    ) -> None:
        self.inputs = list(inputs) or [STDIO]
        self.output = output
        self.on_error = on_error
        self.writer = RecordWriter(
            output, resume=resume, key=output_key, group_size=group_size, resumable=resumable
        )
        self.rejects = RejectWriter(rejects or default_rejects_path(self.inputs, output))
        self.skipped_done = 0

    def __enter__(self) -> Pipe:
        self.writer.open()
        if self.writer.carried:
            logger.info("resuming: %d records already in %s", self.writer.carried, self.output)
        return self

    def records(
        self,
        kind: type[R] | None = None,
        key: Callable[[Any], Any] = lambda record: record.id,
        description: str = "records",
        *,
        adapt: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Iterator[Any]:
        """The input records, validated as `kind` (or made by `adapt` from each JSON object), without those
        whose key the output already holds."""
        for record, _ in self.located(kind, key, description, adapt=adapt):
            yield record

    def located(
        self,
        kind: type[R] | None = None,
        key: Callable[[Any], Any] = lambda record: record.id,
        description: str = "records",
        *,
        adapt: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Iterator[tuple[Any, Origin]]:
        """`records`, each with where it was read, for `reject` once the work on it fails."""
        source = read_located(self.inputs, kind, on_error=self.on_error, rejects=self.rejects, adapt=adapt)
        for record, origin in progress(source, description):
            if self.writer.done and key(record) in self.writer.done:
                self.skipped_done += 1
                continue
            yield record, origin

    def reject(self, origin: Origin, error: str) -> None:
        """Keep the input line a record came from in the rejects file, with why its work failed."""
        self.rejects.add(origin.name, origin.line, error, origin.body)

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        self.writer.write(record)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.rejects.close(commit=exc_type is None)
        finally:
            self.writer.__exit__(exc_type, exc, tb)
        if self.skipped_done:
            logger.info("skipped %d records already done in %s", self.skipped_done, self.output)
        if exc_type is None and self.output != STDIO:
            logger.info("wrote %d records to %s", self.writer.written, display_name(self.output))
