"""Fault tests of the feedback worker on the real broker and Postgres.

* ``kill -9`` of the worker mid-stream, then a restart: every event counted exactly once.
* Postgres restarted mid-stream (an embedded server this test owns): the worker waits,
  resumes, and the counts equal a recount from the archive and an independent
  in-memory count of the produced events.
* Kafka's committed offsets behind Postgres' (lost, or lagging): the worker resumes
  from Postgres' offsets and reads nothing that was counted before.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from services.feedback.domain import Consumed, Deltas, TagUpdate, dedup, max_offsets, plan_feedback
from services.feedback.loadgen import (
    OffsetRecorder,
    caught_up,
    engine_args,
    produce_feedback,
    produce_tags,
    start_worker,
    stored_offsets,
    synthetic_feedback,
    synthetic_tags,
    wait_caught_up,
)
from services.feedback.migrations import MIGRATIONS
from services.feedback.repository import PostgresFeedbackStore, recount_mismatches
from shared.db import apply_migrations, async_pool
from shared.devstack.postgres import postgres_ready, start_embedded_postgres, stop_postgres
from shared.devstack.process import ManagedProcess
from shared.events import FeedbackEvent, TagEvent, decode
from shared.kafka import consumer_config
from shared.settings import Settings

pytestmark = pytest.mark.integration
# The faust engine's fault runs take ~2x the batch engine's (its worker starts and rebalances slowly):
# the slow suite runs them, the default suite runs the same faults on the default (batch) engine.
FAUST = pytest.param("faust", marks=pytest.mark.slow)


@pytest.fixture
def ns() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def workers() -> Iterator[list[ManagedProcess]]:
    procs: list[ManagedProcess] = []
    yield procs
    for p in procs:
        p.stop(timeout_s=10)


def expected_listing_counts(tags: list[TagEvent], events: list[FeedbackEvent]) -> Deltas:
    """What the counts must be, computed by the pure domain from what was produced."""
    known = {t.listing_id: TagUpdate.from_event(t, 0, 0).tag_ids for t in tags}
    consumed = [Consumed(e, "x", 0, i) for i, e in enumerate(events)]
    return plan_feedback(dedup(consumed), known).deltas


def stored_listing_counts(url: str, ns: str) -> dict[tuple[str, str], list[int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT listing_id, tag_id, events, impressions, clicks, carts, purchases, units,"
            " (revenue * 10000)::bigint, accepts, rejects"
            " FROM feedback_listing_tag_counts WHERE listing_id LIKE %s AND events <> 0",
            (f"{ns}-%",),
        ).fetchall()
    return {(r[0], r[1]): list(r[2:]) for r in rows}


def archived(url: str, ns: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM feedback_events WHERE event_id LIKE %s",
            (f"{ns}-%",),
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def progress(url: str, group: str, topic: str) -> int:
    return sum(o + 1 for (t, _), o in stored_offsets(url, group).items() if t == topic)


def wait_for(pred, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("engine", [FAUST, "batch:2"])
def test_kill_9_worker_mid_stream(settings: Settings, database_url: str, ns: str, workers, engine: str) -> None:  # type: ignore[no-untyped-def]
    url = database_url
    apply_migrations(url, MIGRATIONS)
    group = f"feedback-{ns}"
    topics = settings.topics
    tags = synthetic_tags(ns, 300)
    events = list(synthetic_feedback(ns, 12_000, n_users=500, n_listings=300))

    first = start_worker(settings, group, f"fb-{ns}-1", "--batch-size", "300", *engine_args(engine))
    workers.append(first)
    rec = OffsetRecorder(settings.kafka)
    produce_tags(rec, topics.tags, tags)
    assert wait_caught_up(url, group, rec.flush(), 60, worker=first)
    produce_feedback(rec, topics.feedback, events[:8000])
    produce_feedback(rec, topics.feedback, events[:2000:7])  # producer duplicates
    rec.flush()

    # Kill while it is mid-stream: some batches committed in Postgres, Kafka commits behind.
    wait_for(lambda: progress(url, group, topics.feedback) >= 1500, 60, "first batches")
    first.kill()
    done_at_kill = progress(url, group, topics.feedback)
    assert 0 < done_at_kill < 8000 + len(events[:2000:7])

    produce_feedback(rec, topics.feedback, events[8000:])
    produce_feedback(rec, topics.feedback, events[7000:9000])  # redelivered across the kill
    targets = rec.flush()
    second = start_worker(settings, group, f"fb-{ns}-2", "--batch-size", "1000", *engine_args(engine))
    workers.append(second)
    assert wait_caught_up(url, group, targets, 120, worker=second)

    assert archived(url, ns) == (len(events), len(events))
    assert set(recount_mismatches(url).values()) == {0}
    expected = expected_listing_counts(tags, events)
    assert stored_listing_counts(url, ns) == {k: v for k, v in expected.listing.items() if v[0]}


def _fast_shutdown(state_dir: Path, name: str) -> None:
    """SIGINT to the postmaster: Postgres' fast shutdown (aborts open transactions)."""
    proc = ManagedProcess(name, state_dir)
    pid = proc.pid()
    assert pid is not None
    os.kill(pid, signal.SIGINT)
    wait_for(lambda: not proc.running(), 30, "postgres to stop")
    proc.stop()  # reaps and removes the pid file


@pytest.mark.parametrize("engine", [FAUST, "batch:2"])
def test_postgres_restart_mid_stream(settings: Settings, state_dir: Path, ns: str, workers, engine: str) -> None:  # type: ignore[no-untyped-def]
    pg_name = f"pg-feedback-{ns}"
    url = start_embedded_postgres(state_dir, name=pg_name)
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    try:
        apply_migrations(url, MIGRATIONS)
        cfg = settings.model_copy(update={"database_url": url})
        group = f"feedback-{ns}"
        topics = cfg.topics
        tags = synthetic_tags(ns, 200)
        events = list(synthetic_feedback(ns, 9000, n_users=400, n_listings=200, start=datetime(2026, 5, 1, tzinfo=UTC)))
        worker = start_worker(cfg, group, f"fb-{ns}", "--batch-size", "300", *engine_args(engine))
        workers.append(worker)
        rec = OffsetRecorder(cfg.kafka)
        produce_tags(rec, topics.tags, tags)
        assert wait_caught_up(url, group, rec.flush(), 60, worker=worker)
        produce_feedback(rec, topics.feedback, events[:6000])
        rec.flush()

        wait_for(lambda: progress(url, group, topics.feedback) >= 1000, 60, "first batches")
        pid_before = worker.pid()
        _fast_shutdown(state_dir, pg_name)
        assert not postgres_ready(url)
        # The stream goes on while Postgres is down; the worker must wait, not drop or crash.
        produce_feedback(rec, topics.feedback, events[6000:])
        produce_feedback(rec, topics.feedback, events[:3000:5])  # duplicates too
        targets = rec.flush()
        time.sleep(4)
        assert worker.running()

        assert start_embedded_postgres(state_dir, port=port, name=pg_name) == url
        assert wait_caught_up(url, group, targets, 120, worker=worker)

        assert archived(url, ns) == (len(events), len(events))
        assert set(recount_mismatches(url).values()) == {0}
        expected = expected_listing_counts(tags, events)
        assert stored_listing_counts(url, ns) == {k: v for k, v in expected.listing.items() if v[0]}
        # The same process rode out the outage (no crash-restart hid anything).
        assert worker.running() and worker.pid() == pid_before
    finally:
        for w in workers:
            w.stop(timeout_s=10)
        stop_postgres(state_dir, pg_name)


def count_directly(settings: Settings, url: str, group: str, upto: Mapping[tuple[str, int], int]) -> None:
    """Count a topic's records up to the offsets ``upto`` into Postgres for ``group``, without the worker.

    Afterwards Postgres holds counts and offsets for the group while Kafka has no committed
    offset for it at all: what a worker sees when Kafka's offsets were lost or lag behind.
    """
    reader = Consumer(consumer_config(settings.kafka, f"reader-{uuid.uuid4().hex[:6]}"))
    reader.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in upto])
    read: dict[tuple[int, int], Consumed] = {}  # by (partition, offset): a record fetched twice is one record
    try:
        deadline = time.monotonic() + 60
        while not caught_up(max_offsets((c.topic, c.partition, c.offset) for c in read.values()), upto):
            assert time.monotonic() < deadline, f"read only {len(read)} records"
            msg = reader.poll(0.5)
            if msg is not None and not msg.error() and msg.offset() <= upto[(msg.topic(), msg.partition())]:
                event = decode(FeedbackEvent, msg.value())
                read[(msg.partition(), msg.offset())] = Consumed(event, msg.topic(), msg.partition(), msg.offset())
    finally:
        reader.close()
    batch = [read[k] for k in sorted(read)]

    async def go() -> None:
        pool = async_pool(url, max_size=1)
        await pool.open()
        try:
            await PostgresFeedbackStore(pool, group).record_feedback(batch)
        finally:
            await pool.close()

    asyncio.run(go())


@pytest.mark.parametrize("engine", [FAUST, "batch"])
def test_resumes_from_postgres_offsets_not_kafkas(
    settings: Settings, database_url: str, ns: str, workers, engine: str
) -> None:  # type: ignore[no-untyped-def]
    url = database_url
    apply_migrations(url, MIGRATIONS)
    group = f"feedback-{ns}"
    topics = settings.topics
    events = list(synthetic_feedback(ns, 4000, n_users=200, n_listings=100))
    rec = OffsetRecorder(settings.kafka)
    produce_tags(rec, topics.tags, synthetic_tags(ns, 100))
    produce_feedback(rec, topics.feedback, events[:3000])
    count_directly(settings, url, group, {k: v for k, v in rec.flush().items() if k[0] == topics.feedback})
    assert archived(url, ns) == (3000, 3000)

    produce_feedback(rec, topics.feedback, events[3000:])
    targets = rec.flush()
    stats = settings.state_dir / f"feedback-stats-{ns}.json"
    worker = start_worker(
        settings, group, f"fb-{ns}", "--batch-size", "500", "--stats-file", str(stats), *engine_args(engine)
    )
    workers.append(worker)
    assert wait_caught_up(url, group, targets, 90, worker=worker)
    # Within a partition old records come before new ones, so any re-read is in the stats by now.
    wait_for(lambda: stats.exists() and json.loads(stats.read_text())["events"] >= 1000, 30, "stats")
    assert json.loads(stats.read_text())["events"] == 1000  # only the new events were read
    assert archived(url, ns) == (len(events), len(events))
    assert set(recount_mismatches(url).values()) == {0}
