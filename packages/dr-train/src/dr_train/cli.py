"""`dr train`: mid-training, SFT and RL."""

import typer

app = typer.Typer(
    help="Train: mid-training, SFT and RL (each arrives as its own command).", no_args_is_help=True
)
