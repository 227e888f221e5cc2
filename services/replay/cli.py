"""`tagloop replay`: copy a topic range (by offset or time) to a topic or a JSON-lines file.

It never joins a consumer group (partitions are assigned), so live consumers are not
disturbed; ``--rate`` bounds what a backfill adds to the broker's load.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from services.replay.core import ReplayRange, ReplaySummary, replay_to_file, replay_to_topic
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
        rate: float = typer.Option(None, help="At most this many records per second (default: as fast as it goes)"),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
    ) -> None:
        """Replay a topic range by offset or by time, with a progress bar and a summary."""
        if (to_topic is None) == (to_file is None):
            raise typer.BadParameter("give exactly one of --to-topic or --to-file")
        rng = ReplayRange(from_offset, from_time, to_offset, to_time, idle_s)
        kafka = Settings().kafka
        summary = ReplaySummary()
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed} records"),
                   TimeElapsedColumn())
        with Progress(*columns, transient=True, disable=as_json) as progress:
            task = progress.add_task(f"replaying {source}", total=None)

            def tick(_msg: object) -> None:
                progress.advance(task)

            if to_topic:
                replay_to_topic(kafka, source, to_topic, rng, on_record=tick, rate_per_s=rate, summary=summary)
            else:
                replay_to_file(kafka, source, to_file, rng, on_record=tick, rate_per_s=rate, summary=summary)
        result = {"source": source, "target": to_topic or str(to_file), **summary.as_dict()}
        if as_json:
            typer.echo(json.dumps(result, indent=2))
            return
        typer.echo(f"replayed {summary.records} records ({summary.tombstones} tombstones, {summary.bytes} bytes) "
                   f"from {source} to {to_topic or to_file} in {summary.seconds:.1f} s; "
                   f"records from {result['first_record']} to {result['last_record']}")
