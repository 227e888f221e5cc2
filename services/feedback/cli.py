"""`tagloop` commands of the feedback service."""

import typer

app = typer.Typer(no_args_is_help=True, help="feedback commands")
