"""The agent's typer flags, shared by `dr research`, `dr bench run` and every command that runs the agent."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

SearchOpt = Annotated[str | None, typer.Option("--search", help="Search backend: local, searxng, brave.")]
IndexOpt = Annotated[Path | None, typer.Option(help="Index folder for the local backend (dr data index).")]
MaxSteps = Annotated[int | None, typer.Option(help="Model calls per run (default: 30).", show_default=False)]
MaxTokens = Annotated[int | None, typer.Option(help="Tokens per run, all calls.", show_default=False)]
MaxTime = Annotated[float | None, typer.Option("--max-time", help="Seconds per run.", show_default=False)]
Window = Annotated[
    int | None, typer.Option(help="Context window in tokens (default: 131072).", show_default=False)
]
Temperature = Annotated[
    float | None, typer.Option(help="Sampling temperature (default: 0).", show_default=False)
]
NoWeb = Annotated[
    bool, typer.Option("--no-web", help="Never fetch web pages; only the search backend's documents.")
]


class ToolModeChoice(StrEnum):
    auto = "auto"
    api = "api"
    text = "text"


ToolMode = Annotated[
    ToolModeChoice | None,
    typer.Option(
        help="How tools are offered: api (the OpenAI tools API), text (schemas in the system prompt, "
        "<tool_call> blocks in replies), auto (the API; text for a server that refuses it) (default: auto).",
        show_default=False,
    ),
]
