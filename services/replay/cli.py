"""`tagloop replay`: copy a topic range (by offset or time) to a topic or a JSON-lines file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer

from services.replay.core import ReplayRange, replay_to_file, replay_to_topic
from shared.settings import Settings


def register(app: typer.Typer, eval_app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("replay")
    def replay(
        source: str = typer.Argument(..., help="Topic to read, e.g. listings or feedback"),
        to_topic: str = typer.Option(None, help="Produce the records to this topic (e.g. listings to re-tag)"),
        to_file: Path = typer.Option(None, help="Write the records as JSON lines (training sets, audits)"),
        from_offset: int = typer.Option(None, help="Start offset in every partition"),
        from_time: datetime = typer.Option(None, help="Start time (ISO 8601, UTC if no zone)"),
        to_offset: int = typer.Option(None, help="End offset (exclusive)"),
        to_time: datetime = typer.Option(None, help="End time (exclusive)"),
        idle_s: float = typer.Option(5.0, help="Stop after this long without a new record"),
    ) -> None:
        """Replay a topic range by offset or by time."""
        if (to_topic is None) == (to_file is None):
            raise typer.BadParameter("give exactly one of --to-topic or --to-file")
        rng = ReplayRange(from_offset, from_time, to_offset, to_time, idle_s)
        kafka = Settings().kafka
        n = replay_to_topic(kafka, source, to_topic, rng) if to_topic else replay_to_file(kafka, source, to_file, rng)
        typer.echo(f"replayed {n} records from {source} to {to_topic or to_file}")
