"""`tagloop` commands of the feedback service."""

from __future__ import annotations

import typer


def register(app: typer.Typer, eval_app: typer.Typer, bench_app: typer.Typer) -> None:
    """Attach this service's commands to the top-level `tagloop` app and its `eval`/`bench` groups."""
