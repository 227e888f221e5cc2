"""`tagloop` commands of the learner service."""

import typer

app = typer.Typer(no_args_is_help=True, help="learner commands")
