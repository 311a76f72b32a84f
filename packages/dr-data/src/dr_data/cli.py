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


@app.command()
def index(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Document JSONL files ('-': stdin), or markdown/HTML/text files or folders of them."
        ),
    ],
    out: Annotated[
        str, typer.Option("--index", "-i", help="The index folder to write (replaced when done).")
    ],
    hybrid: Annotated[
        bool, typer.Option("--hybrid", help="Also store MiniLM dense vectors for hybrid BM25 + dense search.")
    ] = False,
    on_error: OnErrorOpt = OnErrorChoice.fail,
    rejects: Rejects = None,
) -> None:
    """Build the local search index (tantivy BM25, optionally hybrid) that `dr research --index` searches.

    JSONL lines are Document records ({id, text, title?, url?}) or DeepResearch Bench reports
    ({id, prompt, article}).
    """
    from pathlib import Path

    from dr_agent.documents import load_documents
    from dr_agent.index import build_index
    from dr_core.jsonl import RejectWriter
    from dr_core.log import logger, progress

    with RejectWriter(rejects or f"{out.rstrip('/')}.rejects.jsonl") as sink:
        docs = load_documents(sources, on_error=on_error.value, rejects=sink)
        info = build_index(progress(docs, "indexing"), Path(out), hybrid=hybrid)
    logger.info("indexed %d documents into %s%s", info["documents"], out, " (hybrid)" if hybrid else "")
