"""`dr data`: commands that make and check training data. Parses flags, calls dr_data, streams records."""

from __future__ import annotations

from typing import Annotated

import typer

from dr_core.options import Inputs, OnErrorChoice, OnErrorOpt, Output, Rejects, Resume

app = typer.Typer(
    help="Make and check deep-research training data (JSONL in, JSONL out).", no_args_is_help=True
)


@app.command()
def validate(
    kind: Annotated[str, typer.Argument(help="Record kind: document, report, task, plan, trajectory, ...")],
    inputs: Inputs = None,
    output: Output = "-",
    on_error: OnErrorOpt = OnErrorChoice.fail,
    rejects: Rejects = None,
    resume: Resume = False,
) -> None:
    """Check records against their schema and write them normalized (ids derived, defaults filled).

    Bad lines stop the run with file:line and field (exit 2), or with --on-error skip go to a rejects file.
    """
    from dr_core.pipe import Pipe
    from dr_core.records import kind as record_kind

    cls = record_kind(kind)
    with Pipe(inputs or ["-"], output, on_error=on_error.value, rejects=rejects, resume=resume) as pipe:
        for record in pipe.records(cls, description=f"validating {kind}"):
            pipe.write(record)
