"""Counters rolled up from the archive, exactly once, with their lag measured (the Citus pattern).

In ``counters="rollup"`` mode a feedback batch only appends to the archive and queues its
``batch_id`` (``feedback_rollup_queue``), in its own transaction. A rollup step, in one
transaction:

1. takes the rollup lock (one step at a time; re-attribution takes it too),
2. deletes the oldest queued batches (up to ``max_events``) from the queue (the range marker),
3. copies those batches' archive rows to a per-connection table and adds their pre-combined
   counts to each counter table with one sorted, set-based upsert,

so a batch's counts land exactly once: a step that dies (worker killed, Postgres restart)
rolls back whole and its batches stay queued for the next. Backfill is the same step: queue
batch ids of archived rows (e.g. after truncating a counter table) and let it run.

The queue's age is the counters' lag: ``feedback_counter_freshness`` (SQL) and
:class:`RollupResult.lags_s` (per rolled batch: from its archive transaction to the step
that counted it), which the worker exports as metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from services.feedback import sql

log = logging.getLogger(__name__)

# The oldest queued batches up to ``max_events`` (at least one batch).
_TAKE = (
    b"DELETE FROM feedback_rollup_queue WHERE batch_id IN"
    b" (SELECT batch_id FROM (SELECT batch_id, sum(events) OVER (ORDER BY batch_id) - events AS before"
    b" FROM feedback_rollup_queue ORDER BY batch_id LIMIT %s) q WHERE before < %s)"
    b" RETURNING batch_id, events, archived_at"
)
_ROWS = (
    f"INSERT INTO {sql.ROLLUP_ROWS} SELECT user_id, listing_id, type, quantity, revenue, ts, tag_ids"
    f" FROM feedback_events WHERE batch_id = ANY(%s::int8[])"
).encode()


@dataclass(frozen=True)
class RollupResult:
    batches: int
    events: int
    lags_s: list[float]  # per batch: seconds from its archive transaction to this step's last statement


@dataclass
class RollupStats:
    steps: int = 0
    batches: int = 0
    events: int = 0
    seconds: float = 0.0
    lags_s: list[float] = field(default_factory=list)


async def rollup_step(
    conn: psycopg.AsyncConnection[Any],
    max_batches: int = 64,
    before_commit: Callable[[], None] | None = None,
    max_events: int = 200_000,
) -> RollupResult:
    """One rollup step in its own transaction on ``conn`` (which must have :data:`sql.STAGE_DDL` run).

    ``before_commit`` runs after the counters are written, before the commit (tests use it to fail there).
    """
    async with conn.transaction():
        await conn.execute(b"SELECT pg_advisory_xact_lock(%s)", (sql.ROLLUP_LOCK_KEY,))
        cur = await conn.execute(_TAKE, (max_batches, max_events))
        taken = await cur.fetchall()
        if not taken:
            return RollupResult(0, 0, [])
        ids = sorted(r[0] for r in taken)
        await conn.execute(_ROWS, (ids,))
        for statement in sql.COUNT_FROM_ROLLUP:
            await conn.execute(statement)
        row = await (await conn.execute(b"SELECT clock_timestamp()")).fetchone()
        now = row[0] if row else None
        if before_commit is not None:
            before_commit()
    lags = [(now - at).total_seconds() for _, _, at in taken] if now is not None else []
    return RollupResult(len(taken), sum(r[1] for r in taken), lags)


async def queue_state(conn: psycopg.AsyncConnection[Any]) -> tuple[float, int]:
    """Age of the oldest batch whose counts are not in the counters yet (0 when none), and its events."""
    cur = await conn.execute(b"SELECT lag_s, queued_events FROM feedback_counter_freshness")
    row = await cur.fetchone()
    await conn.commit()
    return (float(row[0]), int(row[1])) if row else (0.0, 0)


class Rollup:
    """The worker's rollup loop: a step once ``min_events`` are queued or the oldest queued batch is
    ``max_wait_s`` old, checked every ``interval_s``; steps back to back while that holds.

    Waiting for events pre-combines more of them per counter row (a key repeated across batches is
    written once per step); ``max_wait_s`` bounds what that adds to the counters' lag. Runs on its own
    pooled connection; a failed step (Postgres restart) is retried after a pause, nothing of it having
    committed.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        interval_s: float = 0.25,
        max_batches: int = 64,
        on_step: Callable[[RollupResult, float], None] | None = None,
        min_events: int = 50_000,
        max_wait_s: float = 1.0,
        max_events: int = 200_000,
    ) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self.max_batches = max_batches
        self.min_events = min_events
        self.max_wait_s = max_wait_s
        self.max_events = max_events
        self.on_step = on_step
        self.stats = RollupStats()
        self.lag_s = 0.0  # age of the oldest queued batch when last looked at
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="feedback-rollup")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def drain(self) -> RollupStats:
        """Step until the queue is empty (tests, benchmark, shutdown)."""
        while (await self.step()).batches:
            pass
        return self.stats

    async def due(self) -> bool:
        async with self.pool.connection() as conn:
            lag_s, events = await queue_state(conn)
        self.lag_s = lag_s
        return events > 0 and (events >= self.min_events or lag_s >= self.max_wait_s)

    async def wait_fresh(self, max_lag_s: float) -> float:
        """Backpressure: wait while the counters lag more than ``max_lag_s`` (archiving faster than the rollup
        counts would only grow the lag); returns the seconds waited. The lag is read from the queue (one small
        query per batch), so it counts a step still running. No wait once the loop has stopped."""
        t0 = time.perf_counter()
        while self._task is not None and not self._task.done():
            async with self.pool.connection() as conn:
                self.lag_s, _ = await queue_state(conn)
            if self.lag_s <= max_lag_s:
                break
            await asyncio.sleep(self.interval_s / 2)
        return time.perf_counter() - t0

    async def step(self) -> RollupResult:
        t0 = time.perf_counter()
        async with self.pool.connection() as conn:
            await conn.execute(sql.STAGE_DDL)
            await conn.commit()
            result = await rollup_step(conn, self.max_batches, max_events=self.max_events)
        elapsed = time.perf_counter() - t0
        if result.batches:
            self.stats.steps += 1
            self.stats.batches += result.batches
            self.stats.events += result.events
            self.stats.seconds += elapsed
            self.stats.lags_s.extend(result.lags_s)
        if self.on_step is not None:
            self.on_step(result, elapsed)
        return result

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = await self.step() if await self.due() else RollupResult(0, 0, [])
            except psycopg.OperationalError as exc:  # restarting, session killed: nothing of the step committed
                log.warning("feedback rollup: Postgres unavailable (%s); retrying", exc)
                result = RollupResult(0, 0, [])
            except psycopg.Error as exc:
                log.warning("feedback rollup: step failed (%s); retrying", exc)
                result = RollupResult(0, 0, [])
            if result.batches:
                self.lag_s = max(result.lags_s, default=0.0)  # at most: newer batches waited less
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval_s)
        # What the last batches queued, for a few seconds (a shutdown has a grace period); whatever is
        # left stays queued and the next worker's rollup counts it.
        deadline = time.monotonic() + 5.0
        try:
            while time.monotonic() < deadline and (await self.step()).batches:
                pass
        except psycopg.Error as exc:
            log.warning("feedback rollup: final steps failed (%s); the next worker rolls them up", exc)
