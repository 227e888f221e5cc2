"""`tagloop` commands of the trainer service."""

import typer

app = typer.Typer(no_args_is_help=True, help="trainer commands")
