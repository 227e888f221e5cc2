"""The walking skeleton on the real stack: listings → tagger → Triton → listing-tags."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from services.simulator.listings import flipkart_records, listing_from_record
from shared.events import DeadLetter, TagEvent, decode, encode
from shared.kafka import producer_config
from shared.settings import Settings
from tests.support import InProcessTagger, committed_offsets, read_topic

pytestmark = pytest.mark.e2e

MALFORMED = [
    b"{not json at all",
    b'{"event_id": "m2", "listing_id": "x2", "op": "created", "ts": "2026-01-01T00:00:00Z"}',  # no title
    b'{"event_id": "m3", "listing_id": "x3", "op": "exploded", "title": "t", "ts": "2026-01-01T00:00:00Z"}',
    b"\xff\xfe\x00binary",
    b'{"event_id": "m5", "listing_id": "x5", "op": "created", "title": "t", "ts": "yesterday"}',
]


def test_listings_are_tagged_end_to_end(stack_settings: Settings, data_dir) -> None:  # type: ignore[no-untyped-def]
    s = stack_settings
    records = list(flipkart_records(data_dir, 200))
    listings = [listing_from_record(r) for r in records]
    producer = Producer(producer_config(s.kafka))
    per_partition: dict[int, int] = {}

    def delivered(err, msg) -> None:  # type: ignore[no-untyped-def]
        assert err is None
        per_partition[msg.partition()] = max(per_partition.get(msg.partition(), 0), msg.offset() + 1)

    for i, listing in enumerate(listings):
        producer.produce(s.topics.listings, key=listing.listing_id.encode(), value=encode(listing),
                         on_delivery=delivered)
        if i % 40 == 0:  # malformed records mixed in
            producer.produce(s.topics.listings, key=f"bad-{i}".encode(), value=MALFORMED[i // 40],
                             on_delivery=delivered)
    assert producer.flush(30) == 0

    group = "tagger-e2e"
    with InProcessTagger(s, group_id=group, batch_size=16):
        tags = read_topic(s.kafka, s.topics.tags, expect=200, timeout_s=300, settle_s=3)
        dead = read_topic(s.kafka, s.topics.dead_letter, expect=5, timeout_s=60)
        wanted = {p: o for p, o in per_partition.items()}
        # Commits follow delivery; give the last async commit a moment.
        import time
        deadline = time.monotonic() + 30
        while committed_offsets(s.kafka, group, s.topics.listings, s.topics.partitions) != wanted:
            assert time.monotonic() < deadline, "offsets were not committed to the end"
            time.sleep(0.5)

    events = [decode(TagEvent, m.value()) for m in tags]
    assert len(events) == 200
    assert {e.listing_id for e in events} == {lst.listing_id for lst in listings}
    assert all(m.key() == e.listing_id.encode() for m, e in zip(tags, events, strict=True))
    assert all(len(e.tags) >= 1 and e.model_version and e.model_name for e in events)
    by_listing = {lst.listing_id: lst for lst in listings}
    assert all(e.source_event_id == by_listing[e.listing_id].event_id for e in events)

    letters = [decode(DeadLetter, m.value()) for m in dead]
    assert len(letters) == 5
    assert sorted(letter.original for letter in letters) == sorted(MALFORMED)
    assert all(letter.reason and letter.service == "tagger" and letter.topic == s.topics.listings
               for letter in letters)
