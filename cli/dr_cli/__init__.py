"""The `dr` command: mounts each package's typer app and the few commands that span them."""
