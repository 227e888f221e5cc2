"""Counters rolled up from the archive: exactly once across failed steps and a killed worker, lag reported.

* A rollup step that fails after writing the counters, or whose Postgres session is killed before
  its commit, leaves nothing behind: its batches stay queued and the next step counts them once.
* ``kill -9`` of a worker while batches wait for their rollup (archived, offsets stored, not counted):
  the next worker rolls them up; counts equal the pure domain's and the archive's recount.
* Freshness: ``feedback_counter_freshness`` shows the queue's age, and the worker exports
  ``feedback_counter_lag_seconds`` on ``/metrics`` (``/readyz`` says the lag too).
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from services.feedback.domain import Consumed, TagUpdate
from services.feedback.loadgen import (
    OffsetRecorder,
    caught_up,
    engine_args,
    produce_feedback,
    produce_tags,
    rollup_backlog,
    start_worker,
    stored_offsets,
    synthetic_feedback,
    synthetic_tags,
    wait_caught_up,
)
from services.feedback.migrations import MIGRATIONS
from services.feedback.repository import PostgresFeedbackStore, recount_mismatches
from services.feedback.rollup import Rollup, rollup_step
from services.feedback.sql import STAGE_DDL
from shared.db import apply_migrations, async_pool
from shared.devstack.process import ManagedProcess, free_port
from shared.events import FeedbackEvent, FeedbackType
from shared.settings import Settings
from tests.integration.test_feedback_faults import expected_listing_counts, stored_listing_counts, wait_for

pytestmark = pytest.mark.integration

TS = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)


@pytest.fixture
def ns() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def migrated(database_url: str) -> str:
    apply_migrations(database_url, MIGRATIONS)
    return database_url


@pytest.fixture
def workers() -> Iterator[list[ManagedProcess]]:
    procs: list[ManagedProcess] = []
    yield procs
    for p in procs:
        p.stop(timeout_s=10)


def queued_batches(url: str, ns: str) -> int:
    """This test's batches still waiting for their rollup."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM feedback_rollup_queue q WHERE EXISTS"
            " (SELECT 1 FROM feedback_events e WHERE e.batch_id = q.batch_id AND e.event_id LIKE %s)",
            (f"{ns}-%",),
        ).fetchone()
    return row[0] if row else -1


class Boom(RuntimeError):
    pass


def test_failed_or_killed_rollup_step_counts_nothing_then_exactly_once(migrated: str, ns: str) -> None:
    url = migrated
    tags = [TagUpdate(f"{ns}-l{i}", (f"a{i % 3}", "b"), False, "v1", 0, i) for i in range(5)]
    events = [
        FeedbackEvent(event_id=f"{ns}-e{i}", user_id=f"{ns}-u{i % 7}", listing_id=f"{ns}-l{i % 5}",
                      type=[FeedbackType.CLICK, FeedbackType.PURCHASE][i % 2], price=2.5, ts=TS)
        for i in range(300)
    ]  # fmt: skip
    batches = [[Consumed(e, "feedback", 0, i + j) for j, e in enumerate(events[i : i + 100])] for i in (0, 100, 200)]

    async def go() -> None:
        pool = async_pool(url, max_size=3)
        await pool.open()
        try:
            store = PostgresFeedbackStore(pool, f"g-{ns}", counters="rollup")
            await store.record_tags(tags, "tags")
            for b in batches:
                assert (await store.record_feedback(b)).counted == 100
            assert queued_batches(url, ns) == 3
            assert stored_listing_counts(url, ns) == {}  # archived, not counted yet

            async with pool.connection() as conn:
                await conn.execute(STAGE_DDL)
                await conn.commit()

                def fail() -> None:
                    raise Boom("worker dies after the counter upserts, before the commit")

                with pytest.raises(Boom):
                    await rollup_step(conn, before_commit=fail)
            assert queued_batches(url, ns) == 3 and stored_listing_counts(url, ns) == {}

            async with pool.connection() as conn:
                await conn.execute(STAGE_DDL)
                await conn.commit()
                pid = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]  # type: ignore[index]

                def kill_session() -> None:  # Postgres loses the session before the commit reaches it
                    with psycopg.connect(url, autocommit=True) as other:
                        other.execute("SELECT pg_terminate_backend(%s)", (pid,))

                with pytest.raises(psycopg.OperationalError):
                    await rollup_step(conn, before_commit=kill_session)
            assert queued_batches(url, ns) == 3 and stored_listing_counts(url, ns) == {}

            stats = await Rollup(pool).drain()
            assert stats.events >= 300
            await Rollup(pool).drain()  # nothing left: counted once
        finally:
            await pool.close()

    asyncio.run(go())
    assert queued_batches(url, ns) == 0
    tag_events = [_tag_event(t) for t in tags]
    assert stored_listing_counts(url, ns) == expected_listing_counts(tag_events, events).listing
    assert set(recount_mismatches(url).values()) == {0}


def _tag_event(u: TagUpdate):  # type: ignore[no-untyped-def]
    from services.feedback.loadgen import tag_event

    return tag_event(u.listing_id, u.tag_ids)


def test_counter_freshness_view_reports_the_queue_age(migrated: str, ns: str) -> None:
    url = migrated
    events = [
        FeedbackEvent(event_id=f"{ns}-e{i}", user_id="u", listing_id=f"{ns}-l", type=FeedbackType.CLICK, ts=TS)
        for i in range(10)
    ]

    async def go() -> list[float]:
        pool = async_pool(url, max_size=2)
        await pool.open()
        try:
            store = PostgresFeedbackStore(pool, f"g-{ns}", counters="rollup")
            await Rollup(pool).drain()  # whatever other tests left queued
            await store.record_feedback([Consumed(e, "feedback", 0, i) for i, e in enumerate(events)])
            await asyncio.sleep(0.5)
            with psycopg.connect(url) as conn:
                lag, queued, queued_events = conn.execute(
                    "SELECT lag_s, queued_batches, queued_events FROM feedback_counter_freshness"
                ).fetchone()  # type: ignore[misc]
            assert lag >= 0.5 and queued >= 1 and queued_events >= 10
            lags: list[float] = []
            await Rollup(pool, on_step=lambda r, _s: lags.extend(r.lags_s)).drain()
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT lag_s, queued_batches FROM feedback_counter_freshness").fetchone() == (
                    0.0, 0,
                )  # fmt: skip
            return lags
        finally:
            await pool.close()

    lags = asyncio.run(go())
    assert lags and min(lags) >= 0.5  # each batch's lag covers the time it waited in the queue


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


@pytest.mark.slow  # two worker processes killed and restarted per engine: ~20 s each
@pytest.mark.parametrize("engine", ["batch", "faust"])
def test_kill_9_between_rollup_steps_then_counts_once_and_lag_is_exported(
    settings: Settings, database_url: str, ns: str, workers, engine: str
) -> None:  # type: ignore[no-untyped-def]
    url = database_url
    apply_migrations(url, MIGRATIONS)
    group = f"fb-rollup-{ns}"
    rec = OffsetRecorder(settings.kafka)
    tags = synthetic_tags(ns, 30)
    events = list(synthetic_feedback(ns, 2000, n_users=40, n_listings=30))
    produce_tags(rec, settings.topics.tags, tags)
    produce_feedback(rec, settings.topics.feedback, events)
    produce_feedback(rec, settings.topics.feedback, events[::7])  # producer duplicates
    targets = rec.flush()

    # A worker that archives but (almost) never rolls up: killed with its batches queued.
    first = start_worker(settings, group, f"fb-{ns}-1", "--batch-size", "300", "--rollup-interval", "3600",
                         *engine_args(f"{engine}+rollup"))  # fmt: skip
    workers.append(first)
    wait_for(lambda: caught_up(stored_offsets(url, group), targets), 90, "first worker archived everything")
    assert queued_batches(url, ns) > 0
    first.kill()
    assert queued_batches(url, ns) > 0 and not stored_listing_counts(url, ns)

    port = free_port()
    second = start_worker(settings, group, f"fb-{ns}-2", "--metrics-port", str(port), *engine_args(f"{engine}+rollup"))
    workers.append(second)
    assert wait_caught_up(url, group, targets, timeout_s=90, worker=second)
    assert rollup_backlog(url) == 0 and queued_batches(url, ns) == 0
    assert stored_listing_counts(url, ns) == expected_listing_counts(tags, events).listing
    assert set(recount_mismatches(url).values()) == {0}

    # The second worker counted the first one's batches: their lag (seconds queued) is exported and bounded.
    deadline = time.monotonic() + 20
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        if _metric(text, "feedback_counter_lag_seconds_count") > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert _metric(text, "feedback_counter_lag_seconds_count") > 0
    assert _metric(text, "feedback_counter_lag_seconds_sum") > 0
    ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read().decode()
    assert ready.startswith("ok: counters lag")


def test_tags_arriving_before_the_rollup_count_under_the_new_tags_only(migrated: str, ns: str) -> None:
    """A pending event whose batch is still queued is attributed but not moved: the rollup counts it under
    the tags that arrived (never under the pending tag); one already rolled up is moved off the pending tag."""
    url = migrated
    early = FeedbackEvent(event_id=f"{ns}-a", user_id="u", listing_id=f"{ns}-l", type=FeedbackType.CLICK, ts=TS)
    late = FeedbackEvent(event_id=f"{ns}-b", user_id="u", listing_id=f"{ns}-l", type=FeedbackType.CLICK, ts=TS)

    async def go() -> None:
        pool = async_pool(url, max_size=2)
        await pool.open()
        try:
            store = PostgresFeedbackStore(pool, f"g-{ns}", counters="rollup")
            await store.record_feedback([Consumed(early, "feedback", 0, 0)])
            await Rollup(pool).drain()  # counted under the pending tag
            await store.record_feedback([Consumed(late, "feedback", 0, 1)])  # queued, not counted yet
            res = await store.record_tags([TagUpdate(f"{ns}-l", ("t1",), False, "v1", 0, 5)], "tags")
            assert res.reattributed == 1  # only the rolled-up one is moved
            await Rollup(pool).drain()
        finally:
            await pool.close()

    asyncio.run(go())
    counts = stored_listing_counts(url, ns)
    assert counts[(f"{ns}-l", "t1")][0] == 2
    assert (f"{ns}-l", "__pending__") not in counts  # moved away (zero rows are left out)
    assert set(recount_mismatches(url).values()) == {0}
