"""The judge's typer flags, shared by `dr judge`, `dr bench` and every command that judges."""

from __future__ import annotations

from typing import Annotated

import typer

JudgeUrl = Annotated[
    str | None, typer.Option(help="Judge endpoint (DR_JUDGE_LLM_BASE_URL).", show_default=False)
]
JudgeModel = Annotated[str | None, typer.Option(help="Judge model (DR_JUDGE_LLM_MODEL).", show_default=False)]
JudgeKey = Annotated[
    str | None, typer.Option(help="Judge API key (DR_JUDGE_LLM_API_KEY).", show_default=False)
]
ModeOpt = Annotated[
    str | None, typer.Option("--mode", help="strict (report rules) or graded (1/0.5/0).", show_default=False)
]
VotesOpt = Annotated[
    int | None, typer.Option(help="Self-consistency votes per item (default: 1).", show_default=False)
]
