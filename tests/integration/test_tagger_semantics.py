"""Stream semantics of the tagger on the real broker and Triton.

* Scale-out by partitions: two real tagger processes join and leave mid-stream; each
  listing is tagged exactly once (a graceful rebalance neither loses nor duplicates).
* Updates are re-tagged only when the tagged text changed, deletes become tombstones,
  and the output keeps each listing's order, within one batch and across batches.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Message

from services.simulator.listings import event_id, produce_listings
from shared.events import ListingEvent, ListingOp, TagEvent, decode
from shared.settings import Settings
from tests.integration.test_tagger_faults import (
    TaggerProcess,
    TopicTail,
    end_offsets,
    real_listings,
    tag_events,
    wait_committed,
)
from tests.support import InProcessTagger

pytestmark = pytest.mark.integration


# -- scale-out and rebalance -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_taggers_join_and_leave_mid_stream_tag_each_listing_once(
    stack_settings: Settings, data_dir: Path, tmp_path: Path
) -> None:
    s = stack_settings
    listings = real_listings(data_dir, 600, offset=2400)
    group = f"tagger-scale-{uuid.uuid4().hex[:6]}"
    a = TaggerProcess("tagger-a", s, tmp_path, group)
    b = TaggerProcess("tagger-b", s, tmp_path, group)
    tail = TopicTail(s, s.topics.tags)
    errors: list[BaseException] = []

    def produce() -> None:  # a steady stream (~75 s) while members come and go
        try:
            produce_listings(s, listings, rate_per_s=8)
        except BaseException as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    try:
        a.start()
        a.wait_ready(120)
        producer.start()
        tail.wait(lambda ms: len(ms) >= 30, 180, "tags from the first tagger")

        b.start()  # joins: partitions move from a to b (a drains and commits them first)
        b.wait_ready(120)
        deadline = time.monotonic() + 180
        while b.tags_produced() < 20:
            assert time.monotonic() < deadline, f"the second tagger got no work:\n{b.log_tail()}"
            time.sleep(0.5)
        b_share = b.tags_produced()
        assert b.stop(timeout_s=60)  # leaves: SIGTERM drains, commits, then leaves the group

        before_rejoin = len(tail.poll(0.2))
        b.start()  # and joins again, mid-stream
        ids = {lst.listing_id for lst in listings}
        producer.join(120)
        assert not errors, errors
        tail.wait(lambda ms: {e.listing_id for e in tag_events(ms)} >= ids, 420, "a tag for every listing")
        wait_committed(s, group, end_offsets(s, s.topics.listings, s.topics.partitions), 60)
        events = tag_events(tail.settle(4.0))
        assert a.running(), f"the first tagger died:\n{a.log_tail()}"
    finally:
        a.stop()
        b.stop()
        tail.close()

    assert b_share > 0
    by_id = {lst.listing_id: lst for lst in listings}
    assert {e.listing_id for e in events} == set(by_id)
    assert all(e.source_event_id == by_id[e.listing_id].event_id for e in events)
    assert len(events) == len(listings), (
        f"{len(events) - len(listings)} duplicated tag records across the rebalances"
    )
    print(f"rebalance: b tagged {b_share:.0f} before leaving; {before_rejoin} tagged before it rejoined")


# -- updates, deletes, order -----------------------------------------------------------


def _version(base: ListingEvent, op: ListingOp, seq: int, **changes: object) -> ListingEvent:
    return base.model_copy(update={
        "op": op, "event_id": event_id(base.listing_id, op, seq), "ts": datetime.now(UTC), **changes,
    })


def _per_key(messages: list[Message]) -> dict[str, list[str | None]]:
    """listing id → the source event ids of its records in topic order (None: a tombstone)."""
    out: dict[str, list[str | None]] = {}
    for m in messages:
        key = (m.key() or b"").decode()
        out.setdefault(key, []).append(None if m.value() is None else decode(TagEvent, m.value()).source_event_id)
    return out


def _scenario(listings: list[ListingEvent]) -> tuple[list[ListingEvent], dict[str, list[str | None]]]:
    """Listing events, and per listing what the changelog must hold, in order."""
    same, changed, deleted, recreated, flipflop, attrs, locale = listings[:7]
    events: list[ListingEvent] = []
    want: dict[str, list[str | None]] = {}

    # Created, then updated with the same text (skipped), then with new text (re-tagged).
    up_same = _version(same, ListingOp.UPDATED, 1)
    up_new = _version(same, ListingOp.UPDATED, 2, title=same.title + " (2-pack)")
    events += [same, up_same, up_new]
    want[same.listing_id] = [same.event_id, up_new.event_id]

    # New description: the tagged text changed.
    up_desc = _version(changed, ListingOp.UPDATED, 1, description="Completely different description.")
    events += [changed, up_desc]
    want[changed.listing_id] = [changed.event_id, up_desc.event_id]

    # Created then deleted: tags, then a tombstone.
    gone = _version(deleted, ListingOp.DELETED, 1)
    events += [deleted, gone]
    want[deleted.listing_id] = [deleted.event_id, None]

    # Deleted, then created again with the same text: tombstone, then tags (not skipped).
    rm = _version(recreated, ListingOp.DELETED, 1)
    again = _version(recreated, ListingOp.CREATED, 2)
    events += [recreated, rm, again]
    want[recreated.listing_id] = [recreated.event_id, None, again.event_id]

    # A, B, A, B: every change of text is re-tagged, in order.
    flips = [flipflop] + [
        _version(flipflop, ListingOp.UPDATED, i, title=flipflop.title + (" B" if i % 2 else ""))
        for i in range(1, 5)
    ]
    events += flips
    want[flipflop.listing_id] = [f.event_id for f in flips]

    # Attributes are part of the tagged text; the locale is not.
    up_attr = _version(attrs, ListingOp.UPDATED, 1, attributes={"colour": "red"})
    up_attr_same = _version(attrs, ListingOp.UPDATED, 2, attributes={"colour": "red"})
    events += [attrs, up_attr, up_attr_same]
    want[attrs.listing_id] = [attrs.event_id, up_attr.event_id]
    up_locale = _version(locale, ListingOp.UPDATED, 1, locale="zh-CN")
    events += [locale, up_locale]
    want[locale.listing_id] = [locale.event_id]
    return events, want


@pytest.mark.slow  # 25-60 s: keeps the default suite under 15 minutes
def test_updates_retag_only_changed_text_deletes_tombstone_order_kept(
    stack_settings: Settings, data_dir: Path
) -> None:
    s = stack_settings
    pool = real_listings(data_dir, 14, offset=3600)
    # Phase 1 is produced before the tagger starts: versions of one listing share a batch.
    first, want_first = _scenario(pool[:7])
    produce_listings(s, first)
    tail = TopicTail(s, s.topics.tags)
    group = f"tagger-semantics-{uuid.uuid4().hex[:6]}"
    try:
        with InProcessTagger(s, group_id=group, batch_size=64, max_inflight=4):
            n_first = sum(len(v) for v in want_first.values())
            tail.wait(lambda ms: len(ms) >= n_first, 180, "phase 1 output")
            # Phase 2 arrives one version at a time: versions of one listing span batches.
            second, want_second = _scenario(pool[7:])
            for ev in second:
                produce_listings(s, [ev])
                time.sleep(0.15)
            n_all = n_first + sum(len(v) for v in want_second.values())
            tail.wait(lambda ms: len(ms) >= n_all, 180, "phase 2 output")
            wait_committed(s, group, end_offsets(s, s.topics.listings, s.topics.partitions), 30)
            messages = tail.settle(3.0)
    finally:
        tail.close()

    got = _per_key(messages)
    assert got == want_first | want_second
    # Tombstones are keyed like the listing; tags carry the content hash of the text they read.
    events = tag_events(messages)
    assert all(e.content_hash for e in events)
    by_event = {e.event_id: e for e in first + second}
    for tag in events:
        assert tag.listing_id == by_event[tag.source_event_id].listing_id


def test_a_partition_assigned_again_forgets_what_was_seen_of_it() -> None:
    """A listing tagged here, re-tagged by another member meanwhile, must not be skipped on return."""
    from services.tagger.core import RawRecord, SeenContent, plan_batch
    from shared.events import encode

    ts = datetime(2026, 1, 1, tzinfo=UTC)
    x = ListingEvent(event_id="e1", listing_id="l1", op=ListingOp.CREATED, title="Red kurta", ts=ts)
    back_to_x = x.model_copy(update={"event_id": "e3", "op": ListingOp.UPDATED})
    seen = SeenContent()

    def rec(ev: ListingEvent, partition: int, offset: int) -> RawRecord:
        return RawRecord("listings", partition, offset, ev.listing_id.encode(), encode(ev))

    assert len(plan_batch([rec(x, 2, 0)], seen, "v1").to_tag) == 1
    # Partition 2 went to another member (which tagged text Y at offset 1) and came back.
    assert plan_batch([rec(back_to_x, 2, 2)], seen, "v1").unchanged  # what would go wrong
    seen.forget_partitions({("listings", 2)})
    assert len(plan_batch([rec(back_to_x, 2, 2)], seen, "v1").to_tag) == 1
    # Other partitions' memory is kept.
    other = x.model_copy(update={"listing_id": "l2", "event_id": "e4"})
    plan_batch([rec(other, 1, 0)], seen, "v1")
    seen.forget_partitions({("listings", 2)})
    again = other.model_copy(update={"event_id": "e5", "op": ListingOp.UPDATED})
    assert plan_batch([rec(again, 1, 1)], seen, "v1").unchanged
