"""Typer option types shared by every dr command, so the same flag means the same thing everywhere."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

Inputs = Annotated[
    list[str] | None,
    typer.Argument(help="Input JSONL files (.gz/.zst ok); '-' or nothing reads stdin.", show_default=False),
]
Output = Annotated[str, typer.Option("--output", "-o", help="Output JSONL file, or '-' for stdout.")]


class OnErrorChoice(StrEnum):
    fail = "fail"
    skip = "skip"


OnErrorOpt = Annotated[
    OnErrorChoice,
    typer.Option(
        "--on-error",
        help="fail: stop at the first bad line (exit 2). skip: keep going, bad lines go to the rejects file.",
    ),
]
Rejects = Annotated[
    str | None,
    typer.Option(
        help="Where --on-error skip keeps bad lines (default: OUTPUT.rejects.jsonl)", show_default=False
    ),
]
Resume = Annotated[bool, typer.Option("--resume", help="Keep the output file's records and skip their ids.")]

# LLM endpoint flags: None means "not given", so the config file and DR_LLM_* variables apply.
BaseUrl = Annotated[
    str | None, typer.Option(help="OpenAI-compatible base URL (DR_LLM_BASE_URL).", show_default=False)
]
Model = Annotated[
    str | None, typer.Option(help="Model name at that endpoint (DR_LLM_MODEL).", show_default=False)
]
ApiKey = Annotated[str | None, typer.Option(help="API key (DR_LLM_API_KEY).", show_default=False)]
Concurrency = Annotated[int | None, typer.Option(help="Requests in flight at most.", show_default=False)]
