"""A listing-service simulator: the real Flipkart catalog as ListingEvents on ``listings``.

The listing service is not ours; this stands in for it in the demo, tests and benchmarks.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Producer

from shared.catalog.flipkart import read_flipkart
from shared.catalog.records import Record
from shared.events import ListingEvent, ListingOp, encode
from shared.kafka import producer_config
from shared.settings import Settings

EVENT_NAMESPACE = uuid.UUID("6f1d7c1e-5a7b-4d55-9c1e-7a9b1f0c2d3e")


def event_id(listing_id: str, op: ListingOp, seq: int = 0) -> str:
    """Deterministic event ids: re-running the simulator re-sends the same events."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{listing_id}:{op}:{seq}"))


def listing_from_record(record: Record, op: ListingOp = ListingOp.CREATED, seq: int = 0,
                        ts: datetime | None = None) -> ListingEvent:
    """A ListingEvent whose tagged text equals the training text of the same record."""
    title, _, description = record.text.partition("\n")
    return ListingEvent(
        event_id=event_id(record.id, op, seq),
        listing_id=record.id,
        op=op,
        title=title,
        description=description,
        ts=ts or datetime.now(UTC),
    )


def flipkart_records(data_dir: Path, limit: int | None = None) -> Iterator[Record]:
    """Catalog rows in file order (first ``limit``)."""
    for i, record in enumerate(read_flipkart(data_dir)):
        if limit is not None and i >= limit:
            return
        yield record


def produce_listings(
    settings: Settings,
    listings: Iterable[ListingEvent],
    rate_per_s: float | None = None,
    on_sent: Callable[[ListingEvent], None] | None = None,
    stamp_send_time: bool = False,
) -> int:
    """Produce listings keyed by listing id, optionally paced; returns how many were delivered.

    With ``stamp_send_time`` each listing's ``ts`` is set to the moment it is sent (what
    ``on_sent`` receives), so end-to-end latency can be measured from it.
    """
    producer = Producer(producer_config(settings.kafka))
    delivered = 0
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1
        else:
            errors.append(str(err))

    start = time.perf_counter()
    for i, listing in enumerate(listings):
        if rate_per_s:
            wait = start + i / rate_per_s - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        if stamp_send_time:
            listing = listing.model_copy(update={"ts": datetime.now(UTC)})
        producer.produce(settings.topics.listings, key=listing.listing_id.encode(), value=encode(listing),
                         on_delivery=on_delivery)
        producer.poll(0)
        if on_sent:
            on_sent(listing)
    producer.flush(30)
    if errors:
        raise RuntimeError(f"{len(errors)} listings not delivered: {errors[0]}")
    return delivered
