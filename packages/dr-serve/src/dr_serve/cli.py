"""`dr serve`: launch an inference engine and the research API."""

import typer

app = typer.Typer(
    help="Serve a model (vLLM or transformers serve) and the research API.", no_args_is_help=True
)
