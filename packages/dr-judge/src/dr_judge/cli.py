"""`dr judge`: score reports and answers against checklists."""

import typer

app = typer.Typer(help="Judge reports and answers against checklists.", no_args_is_help=True)
