"""`tagloop produce ...`: simulators of the services around tagloop."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import Progress

from services.simulator.listings import flipkart_records, listing_from_record, produce_listings
from shared.catalog.readers import locate_catalog
from shared.cli_errors import kafka_unreachable
from shared.preflight import require_kafka
from shared.settings import Settings


def register(app: typer.Typer, eval_app: typer.Typer, bench_app: typer.Typer) -> None:
    produce = typer.Typer(no_args_is_help=True, help="Simulate the listing service (real catalog data).")
    app.add_typer(produce, name="produce")

    @produce.command("listings")
    def listings(
        data: Path = typer.Option(None, "--from", help="Flipkart data dir or products.csv.gz (default: data_dir)"),
        limit: int = typer.Option(None, help="Only the first N listings"),
        rate: float = typer.Option(None, help="Listings per second (default: as fast as possible)"),
    ) -> None:
        """Stream real Flipkart listings to the listings topic as ListingEvents."""
        settings = Settings()
        # The data folder, its flipkart/ folder or products.csv.gz; a wrong path is named as given.
        data_dir = locate_catalog(data or settings.data_dir, "flipkart")
        records = list(flipkart_records(data_dir, limit))
        require_kafka(settings.kafka)
        with Progress() as progress:
            task = progress.add_task("listings", total=len(records))
            n = produce_listings(settings, (listing_from_record(r) for r in records), rate,
                                 on_sent=lambda _l: progress.advance(task))
        if n < len(records):  # the producer gave up waiting: the broker went away mid-way
            raise kafka_unreachable(settings.kafka.bootstrap_servers, f"{n} of {len(records)} listings delivered")
        typer.echo(f"delivered {n} listings to {settings.topics.listings}")
