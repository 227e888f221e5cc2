"""The feedback service against the real Postgres and broker: exact, deduplicated, attributed counts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer

from services.feedback.domain import PENDING_TAG, Consumed, TagUpdate
from services.feedback.loadgen import (
    OffsetRecorder,
    engine_args,
    produce_feedback,
    produce_tags,
    start_worker,
    synthetic_feedback,
    synthetic_tags,
    tag_event,
    wait_caught_up,
)
from services.feedback.migrations import MIGRATIONS
from services.feedback.repository import CounterMode, PostgresFeedbackStore, prune_event_ids, recount_mismatches
from services.feedback.rollup import Rollup
from shared.db import apply_migrations, async_pool
from shared.devstack.process import ManagedProcess
from shared.events import DeadLetter, FeedbackEvent, FeedbackType, decode, encode
from shared.kafka import consumer_config
from shared.settings import Settings

pytestmark = pytest.mark.integration

TS = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)


@pytest.fixture
def migrated(database_url: str) -> str:
    apply_migrations(database_url, MIGRATIONS)
    return database_url


@pytest.fixture
def ns() -> str:
    """A prefix for ids: tests share the session database, so each owns its listings and users."""
    return uuid.uuid4().hex[:8]


def fb(ns: str, eid: str, listing: str, type_: str = "click", user: str = "u1", **kw: object) -> FeedbackEvent:
    return FeedbackEvent(
        event_id=f"{ns}-{eid}",
        user_id=f"{ns}-{user}",
        listing_id=f"{ns}-{listing}",
        type=FeedbackType(type_),
        ts=kw.pop("ts", TS),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def consumed(events: list[FeedbackEvent], partition: int = 0, start: int = 0) -> list[Consumed]:
    return [Consumed(e, "feedback", partition, start + i) for i, e in enumerate(events)]


def listing_counts(url: str, listing: str) -> dict[str, tuple[int, ...]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tag_id, events, impressions, clicks, carts, purchases, units, revenue, accepts, rejects"
            " FROM feedback_listing_tag_counts WHERE listing_id = %s",
            (listing,),
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


async def _with_store(url: str, group: str, fn, counters: CounterMode = "inline"):  # type: ignore[no-untyped-def]
    pool = async_pool(url, max_size=4)
    await pool.open()
    try:
        return await fn(PostgresFeedbackStore(pool, group, counters=counters))
    finally:
        await pool.close()


async def settle(store: PostgresFeedbackStore) -> None:
    """Counters as of now: in rollup mode, roll up every queued batch."""
    if store.counters == "rollup":
        await Rollup(store.pool).drain()


@pytest.mark.parametrize("counters", ["inline", "rollup"])
def test_store_counts_once_attributes_late_and_matches_recount(migrated: str, ns: str, counters: CounterMode) -> None:
    url = migrated
    tags = [TagUpdate(f"{ns}-l1", ("t1", "t2"), False, "v1", 0, 0)]
    batch = consumed(
        [
            fb(ns, "a", "l1"),
            fb(ns, "b", "l1", "purchase", price=19.99, quantity=2),
            fb(ns, "a", "l1"),  # duplicate inside the batch (producer retry)
            fb(ns, "c", "late", "impression"),  # listing tags not known yet
            fb(ns, "d", "late", "tag_reject", tag_id="t9"),  # judged tag: attributed at once
            fb(ns, "e", "l1", ts=TS + timedelta(days=1, hours=3)),  # another day partition
        ]
    )

    async def go(store: PostgresFeedbackStore) -> None:
        await store.record_tags(tags, "tags")
        first = await store.record_feedback(batch)
        again = await store.record_feedback(batch)  # redelivered after a restart: below the stored offsets
        # The same events again at new offsets: a producer that sent them twice (the archive's key drops them).
        resent = await store.record_feedback(consumed([c.event for c in batch], start=100))
        assert (first.counted, first.duplicates, first.pending) == (5, 1, 1)
        assert (again.counted, again.duplicates) == (0, 6)
        assert (resent.counted, resent.duplicates) == (0, 6)
        await settle(store)
        assert listing_counts(url, f"{ns}-late")[PENDING_TAG][0] == 1
        res = await store.record_tags([TagUpdate(f"{ns}-late", ("t3",), False, "v1", 1, 7)], "tags")
        assert res.reattributed == 1

    asyncio.run(_with_store(url, f"g-{ns}", go, counters))
    l1 = listing_counts(url, f"{ns}-l1")
    assert l1["t1"] == (3, 0, 2, 0, 1, 2, Decimal("39.9800"), 0, 0)
    late = listing_counts(url, f"{ns}-late")
    assert late["t3"][:2] == (1, 1)
    assert late["t9"][-1] == 1
    assert late[PENDING_TAG][0] == 0
    assert set(recount_mismatches(url).values()) == {0}
    with psycopg.connect(url) as conn:
        offs = conn.execute(
            'SELECT topic, partition, "offset" FROM feedback_offsets WHERE consumer_group = %s ORDER BY 1, 2',
            (f"g-{ns}",),
        ).fetchall()
        parts = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'feedback_events'::regclass"
        ).fetchone()
        # user×tag×hour is derived from the archive (a view): attribution changes show at once.
        hourly = conn.execute(
            "SELECT tag_id, hour, events, purchases FROM feedback_user_tag_hourly WHERE user_id = %s ORDER BY 1, 2",
            (f"{ns}-u1",),
        ).fetchall()
    later = datetime(2026, 3, 2, 13, tzinfo=UTC)
    hour = datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert hourly == [("t1", hour, 2, 1), ("t1", later, 1, 0), ("t2", hour, 2, 1), ("t2", later, 1, 0),
                      ("t3", hour, 1, 0), ("t9", hour, 1, 0)]  # fmt: skip
    assert offs == [("feedback", 0, 105), ("tags", 0, 0), ("tags", 1, 7)]
    assert parts is not None and parts[0] >= 2


@pytest.mark.parametrize("counters", ["inline", "rollup"])
def test_concurrent_workers_overlapping_batches_count_once(migrated: str, ns: str, counters: CounterMode) -> None:
    """Two workers (rebalance overlap) handle the same events at once, each in offset order (as a consumer
    does): each event counted once, no deadlock; and a producer's resend of them at later offsets, too."""
    url = migrated
    events = [
        fb(ns, f"e{i}", f"l{i % 7}", ["impression", "click", "purchase"][i % 3], user=f"u{i % 5}", price=1.5)
        for i in range(600)
    ]
    tag_updates = [TagUpdate(f"{ns}-l{i}", ("a", "b", f"c{i}"), False, "v1", 0, i) for i in range(7)]

    async def go(store: PostgresFeedbackStore) -> None:
        await store.record_tags(tag_updates, "tags")
        batches = [consumed(events[i : i + 200], start=i) for i in range(0, 600, 200)]
        resent = [consumed(events[i : i + 200], start=1000 + i) for i in range(0, 600, 200)]

        async def worker(polls: list[list[Consumed]]) -> int:
            return sum([(await store.record_feedback(b)).counted for b in polls])

        counted = await asyncio.gather(worker(batches), worker(batches))
        assert sum(counted) == 600
        assert await asyncio.gather(worker(resent), worker(resent)) == [0, 0]
        await settle(store)

    asyncio.run(_with_store(url, f"g-{ns}", go, counters))
    with psycopg.connect(url) as conn:
        total = conn.execute(
            "SELECT sum(events) FROM feedback_listing_tag_counts WHERE listing_id LIKE %s AND tag_id = 'a'",
            (f"{ns}-%",),
        ).fetchone()
    assert total == (600,)
    assert set(recount_mismatches(url).values()) == {0}


def _dead_letters(settings: Settings, expected: int, timeout_s: float = 30.0) -> list[DeadLetter]:
    consumer = Consumer(consumer_config(settings.kafka, f"dl-{uuid.uuid4().hex[:6]}"))
    consumer.subscribe([settings.topics.dead_letter])
    out: list[DeadLetter] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append(decode(DeadLetter, msg.value()))
    finally:
        consumer.close()
    return out


@pytest.fixture
def worker_group(ns: str) -> str:
    return f"feedback-{ns}"


@pytest.fixture
def run_worker(settings: Settings, worker_group: str) -> Iterator[list[ManagedProcess]]:
    """Started workers, stopped (by pid) at the end of the test."""
    procs: list[ManagedProcess] = []
    yield procs
    for p in procs:
        p.stop(timeout_s=10)


# faust (22 s) in the slow suite, as in test_feedback_faults: keeps the default one under 15 minutes
@pytest.mark.parametrize("engine", [pytest.param("faust", marks=pytest.mark.slow), "batch:2", "batch+rollup"])
def test_worker_end_to_end(
    settings: Settings, migrated: str, ns: str, worker_group: str, run_worker, engine: str
) -> None:  # type: ignore[no-untyped-def]
    url = migrated
    rec = OffsetRecorder(settings.kafka)
    topics = settings.topics
    produce_tags(rec, topics.tags, synthetic_tags(ns, 40))
    events = list(synthetic_feedback(ns, 3000, n_users=50, n_listings=50))  # listings 40..49 have no tags
    produce_feedback(rec, topics.feedback, events)
    produce_feedback(rec, topics.feedback, events[::10])  # producer duplicates
    bad_type = orjson.loads(encode(events[0])) | {"event_id": f"{ns}-bad", "type": "teleport"}
    malformed = [b"{not json", b'{"event_id": "x"}', orjson.dumps(bad_type)]
    for raw in malformed:
        rec.send(topics.feedback, b"bad-user", raw)
    rec.send(topics.tags, b"broken-listing", b"[]")
    targets = rec.flush()

    worker = start_worker(settings, worker_group, f"fb-{ns}", "--batch-size", "500", *engine_args(engine))
    run_worker.append(worker)
    assert wait_caught_up(url, worker_group, targets, timeout_s=90, worker=worker), "worker did not catch up"

    with psycopg.connect(url) as conn:
        archived, pending = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE tag_ids IS NULL) FROM feedback_events WHERE event_id LIKE %s",
            (f"{ns}-%",),
        ).fetchone()  # type: ignore[misc]
        assert archived == 3000  # duplicates archived (and counted) once
        assert pending > 0  # listings 40..49: kept, counted under the pending tag
        unattributed = conn.execute(
            "SELECT sum(events) FROM feedback_unattributed WHERE listing_id LIKE %s", (f"{ns}-%",)
        ).fetchone()
        assert unattributed == (pending,)
    assert set(recount_mismatches(url).values()) == {0}

    # Tags for the unknown listings arrive late: their events move off the pending tag.
    late = OffsetRecorder(settings.kafka)
    produce_tags(late, topics.tags, [tag_event(f"{ns}-l{i}", ["late"]) for i in range(40, 50)])
    assert wait_caught_up(url, worker_group, late.flush(), timeout_s=60, worker=worker)
    with psycopg.connect(url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM feedback_events WHERE event_id LIKE %s AND tag_ids IS NULL", (f"{ns}-%",)
        ).fetchone()
        moved = conn.execute(
            "SELECT sum(events) FROM feedback_listing_tag_counts WHERE listing_id LIKE %s AND tag_id = 'late'",
            (f"{ns}-%",),
        ).fetchone()
    assert left == (0,)
    assert moved is not None and moved[0] > 0
    assert set(recount_mismatches(url).values()) == {0}

    # A tombstone deletes listing l0: later feedback about it is archived, counted against no tag.
    gone = OffsetRecorder(settings.kafka)
    gone.send(topics.tags, f"{ns}-l0".encode(), None)
    assert wait_caught_up(url, worker_group, gone.flush(), timeout_s=60, worker=worker)
    after = FeedbackEvent(
        event_id=f"{ns}-after-delete", user_id=f"{ns}-u1", listing_id=f"{ns}-l0", type=FeedbackType.CLICK, ts=TS
    )
    produce_feedback(gone, topics.feedback, [after])
    assert wait_caught_up(url, worker_group, gone.flush(), timeout_s=60, worker=worker)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT tag_ids FROM feedback_events WHERE event_id = %s", (after.event_id,)).fetchone()
        deleted = conn.execute(
            "SELECT deleted, tag_ids FROM feedback_listing_tags WHERE listing_id = %s", (f"{ns}-l0",)
        ).fetchone()
    assert row == ([],)
    assert deleted == (True, [])
    assert set(recount_mismatches(url).values()) == {0}

    letters = _dead_letters(settings, expected=4)
    assert len(letters) == 4
    assert {dl.topic for dl in letters} == {topics.feedback, topics.tags}
    assert all(dl.service == "feedback" and dl.reason and dl.error_class for dl in letters)
    assert {dl.original for dl in letters} >= set(malformed)
    teleport = next(dl for dl in letters if b"teleport" in dl.original)
    assert "type" in teleport.reason


def test_archive_key_refuses_old_ids_and_prune_empties_only_old_legacy_ids(migrated: str, ns: str) -> None:
    """Since migration 7 the archive's key is the duplicate guard (kept as long as its day partitions);
    ``prune_event_ids`` only empties the id table workers before it wrote, old ids first."""
    url = migrated
    old_ts = datetime(2026, 1, 5, 12, tzinfo=UTC)
    events = [fb(ns, "old", "l1", ts=old_ts), fb(ns, "late", "l1", ts=old_ts), fb(ns, "new", "l1")]

    async def count(store: PostgresFeedbackStore) -> None:
        assert (await store.record_feedback(consumed(events))).counted == 3

    asyncio.run(_with_store(url, f"g-{ns}", count))
    with psycopg.connect(url) as conn:
        # What a worker before migration 7 left: the ids it claimed.
        conn.execute("INSERT INTO feedback_event_ids SELECT unnest(%s::text[])", ([e.event_id for e in events],))
        # "old" was archived long ago; "late" is as old by event time but arrived just now.
        conn.execute("UPDATE feedback_events SET ingested_at = %s WHERE event_id = %s", (old_ts, f"{ns}-old"))
    assert prune_event_ids(url, datetime(2026, 2, 1, tzinfo=UTC)) >= 1
    with psycopg.connect(url) as conn:
        left = conn.execute(
            "SELECT event_id FROM feedback_event_ids WHERE event_id LIKE %s ORDER BY 1", (f"{ns}-%",)
        ).fetchall()
    assert left == [(f"{ns}-late",), (f"{ns}-new",)]

    async def redeliver(store: PostgresFeedbackStore) -> None:
        again = await store.record_feedback(consumed(events, start=10))  # new offsets: a producer's resend
        assert (again.counted, again.duplicates) == (0, 3)  # the archive's key refuses them all

    asyncio.run(_with_store(url, f"g-{ns}", redeliver))
    assert archived_count(url, ns) == 3  # the archive is kept


def archived_count(url: str, ns: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM feedback_events WHERE event_id LIKE %s", (f"{ns}-%",)).fetchone()
    return row[0] if row else -1
