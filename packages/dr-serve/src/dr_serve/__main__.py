"""`python -m dr_serve [MODEL] [flags]`: `dr serve` itself, the same command with the same flags, for a
process that starts it again without the `dr` command (`dr serve MODEL --api-port P` runs the research API
beside its engine as `python -m dr_serve --engine none --api-port P --base-url URL ...`).

The API key travels in the environment (DR_API_API_KEY), never in argv, so `ps` does not show it; the model
name in DR_LLM_MODEL.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import click
    import typer

    from dr_core import log
    from dr_core.errors import DrError
    from dr_serve.cli import app

    log.setup()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="python -m dr_serve", standalone_mode=False)
    except DrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except click.UsageError as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
