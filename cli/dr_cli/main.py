"""`dr`: one command over the dr packages. Each group is the typer app of one package.

This module only mounts apps and turns package errors into messages and exit codes; heavy imports
happen inside the commands that need them, so `dr --help` starts fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from dr_core import __version__
from dr_core.errors import DrError, PipeClosed

# (group name, module holding its typer `app`, its help): a group's module is imported only when the group
# is used, so that `dr --help` and `dr research` load none of them (pydantic, torch)
GROUPS = [
    ("data", "dr_data.cli", "Make and check deep-research training data (JSONL in, JSONL out)."),
    ("train", "dr_train.cli", "Train: mid-training, SFT and RL into Hugging Face checkpoints."),
    ("judge", "dr_judge.cli", "Judge reports and answers against checklists; agreement with labels."),
    ("bench", "dr_bench.cli", "Benchmark agents on research and deep-search suites."),
    # one command each (its app has no other): its flags are built from configs, which load pydantic
    (
        "serve",
        "dr_serve.cli",
        "Serve a model with vLLM (or transformers serve), and the research API beside it.",
    ),
    ("research", "dr_agent.cli", "Research a question with the agent, or run it on a task file."),
]


LAZY = {name: (module, help_text) for name, module, help_text in GROUPS}


def silence_stdout() -> None:
    """After the reader of stdout left, point stdout at /dev/null so the final flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class DrGroup(TyperGroup):
    """The root group: package errors, and a command's flags that do not parse or validate, become one
    plain line on stderr and an exit code, in `dr` and in `dr repl` alike (a plain line, unwrapped, so
    scripts can grep for file:line)."""

    listing = False  # formatting the root's help: the groups' names and help only, nothing imported

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, _, _ in GROUPS] + [
            name for name in super().list_commands(ctx) if name not in LAZY
        ]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY and cmd_name not in self.commands:
            module, help_text = LAZY[cmd_name]
            if self.listing:
                return click.Group(cmd_name, help=help_text)
            group = typer.main.get_command(importlib.import_module(module).app)
            group.name = cmd_name
            self.add_command(group, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PipeClosed:
            silence_stdout()
            ctx.exit(0)
        except DrError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(error.exit_code)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a group called bare: click shows its help
        except click.UsageError as error:
            where = error.ctx.command_path if error.ctx is not None else "dr"
            click.echo(f"error: {error.format_message()} (see {where} --help)", err=True)
            ctx.exit(error.exit_code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dr {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    app = typer.Typer(
        cls=DrGroup,
        name="dr",
        help="Build deep-research agents on a budget: data, training, judging, serving and benchmarks.\n\n"
        "Tools read and write JSONL on stdin/stdout; logs and progress go to stderr.",
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,  # locals may hold API keys
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(
        config: Annotated[
            Path | None,
            typer.Option(
                "--config", envvar="DR_CONFIG", help="TOML settings file (flags and DR_* win over it)."
            ),
        ] = None,
        quiet: Annotated[
            bool, typer.Option("--quiet", "-q", help="Warnings only; no progress bars.")
        ] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
        version: Annotated[
            bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
        ] = False,
    ) -> None:
        from dr_core import config as settings
        from dr_core import log

        log.setup(quiet=quiet, verbose=verbose)
        settings.use_config_file(config)

    from dr_cli import commands

    commands.register(app)
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()
