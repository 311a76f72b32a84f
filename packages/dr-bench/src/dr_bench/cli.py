"""`dr bench`: run suites, report scores, compare systems."""

import typer

app = typer.Typer(help="Benchmark agents on research and deep-search suites.", no_args_is_help=True)
