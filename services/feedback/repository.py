"""Postgres adapter of the feedback service: one transaction per micro-batch.

:class:`PostgresFeedbackStore` runs the domain's units of work
(:func:`~services.feedback.domain.handle_feedback`, :func:`~services.feedback.domain.handle_tags`)
inside one transaction each, retrying the whole transaction when Postgres is
unreachable (restart), or aborts it for a deadlock/serialization failure.

Exactly once without a per-event id claim: the batch's transaction locks and moves its
partitions' stored offsets (a Kafka redelivery is below them and skipped), and the archive's
unique key (event_id, ts) drops producer duplicates in the one ``INSERT .. SELECT .. ON
CONFLICT DO NOTHING`` that moves the batch from its staging table (binary ``COPY``) into
the archive. Counters are either written by the batch itself (``counters="inline"``: one
sorted ``INSERT .. SELECT .. GROUP BY .. ON CONFLICT DO UPDATE`` per counter table over the
staged rows, aggregated in SQL) or rolled up later from the archive
(``counters="rollup"``, :mod:`services.feedback.rollup`), the batch only joining the rollup
queue in its transaction. Statements that lock counter rows do so in a fixed table order and
in key order, so concurrent workers wait for each other but never deadlock.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, TypeVar

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

from services.feedback import sql
from services.feedback.domain import (
    COUNTER_FIELDS,
    ArchiveRow,
    Consumed,
    Deltas,
    Fact,
    FeedbackResult,
    TagIds,
    TagsResult,
    TagUpdate,
    handle_feedback,
    handle_tags,
    revenue_decimal,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
CounterMode = Literal["inline", "rollup"]
_ZERO = Decimal(0)


def day_bounds(d: date) -> tuple[datetime, datetime]:
    start = datetime(d.year, d.month, d.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def partition_name(d: date) -> str:
    return f"feedback_events_{d:%Y%m%d}"


class PostgresUnitOfWork:
    """:class:`~services.feedback.domain.FeedbackUnitOfWork` on one open transaction."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], counters: CounterMode = "inline") -> None:
        self.conn = conn
        self.counters = counters

    async def lock_offsets(self, group: str, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        if not partitions:
            return {}
        keys = sorted(partitions)
        cur = await self.conn.execute(sql.LOCK_OFFSETS, (group, [k[0] for k in keys], [k[1] for k in keys]))
        return {(t, p): o for t, p, o in await cur.fetchall()}

    async def listing_tags(self, listing_ids: Sequence[str]) -> dict[str, TagIds | None]:
        cur = await self.conn.execute(
            b"SELECT listing_id, tag_ids FROM feedback_listing_tags WHERE listing_id = ANY(%s::text[])",
            (list(listing_ids),),
            binary=True,
        )
        found = {lid: (tuple(tags) if tags is not None else None) for lid, tags in await cur.fetchall()}
        unknown = sorted(lid for lid in listing_ids if found.get(lid) is None)
        if unknown:
            # A placeholder row to lock: the tags transaction of the same listing then either
            # committed before (we see its tags now) or waits for us (and re-attributes our events).
            await self.conn.execute(
                b"INSERT INTO feedback_listing_tags (listing_id) SELECT unnest(%s::text[]) ORDER BY 1"
                b" ON CONFLICT DO NOTHING",
                (unknown,),
            )
            cur = await self.conn.execute(
                b"SELECT listing_id, tag_ids FROM feedback_listing_tags WHERE listing_id = ANY(%s::text[])"
                b" ORDER BY listing_id FOR SHARE",
                (unknown,),
                binary=True,
            )
            for lid, tags in await cur.fetchall():
                found[lid] = tuple(tags) if tags is not None else None
        return found

    async def archive_and_count(self, rows: Sequence[ArchiveRow]) -> int:
        """Binary COPY into the staging table; one statement moves it into the archive (dropping producer
        duplicates); then counted from the stage in SQL, or queued for the rollup."""
        async with self.conn.cursor() as cur:
            async with cur.copy(sql.COPY_STAGE_EVENTS) as copy:
                copy.set_types(sql.ARCHIVE_TYPES)
                write = copy.write_row
                arrays: dict[TagIds, list[str]] = {}  # psycopg dumps lists, not tuples; a listing's tags repeat
                for r in rows:
                    ev = r.event
                    tags = r.tag_ids
                    if tags is not None:
                        tags_list = arrays.get(tags)
                        if tags_list is None:
                            tags_list = arrays[tags] = list(tags)
                    await write(
                        (
                            ev.event_id, ev.user_id, ev.listing_id, str(ev.type), ev.tag_id, ev.quantity, ev.price,
                            revenue_decimal(r.revenue) if r.revenue else _ZERO, ev.ts,
                            tags_list if tags is not None else None, r.partition, r.offset, ev.position,
                        )
                    )  # fmt: skip
            rollup = self.counters == "rollup"
            await cur.execute(sql.archive_from_stage_sql(queue=rollup))
            row = await cur.fetchone()
            archived = int(row[0]) if row else 0
            if rollup or not archived:
                return archived
            if archived < len(rows):
                await cur.execute(sql.DROP_DUPLICATES_FROM_STAGE)
            for statement in sql.COUNT_FROM_STAGE:
                await cur.execute(statement)
            return archived

    async def add_counts(self, deltas: Deltas) -> None:
        """Binary COPY of the deltas into per-connection staging tables, then one upsert per table."""
        for attr, statement in sql.UPSERTS.items():
            table: dict[tuple[Any, ...], list[int]] = getattr(deltas, attr)
            if not table:
                continue
            copy_sql, types = sql.STAGE_COPY[attr]
            async with self.conn.cursor() as cur:
                async with cur.copy(copy_sql) as copy:
                    copy.set_types(types)
                    for key in sorted(table):  # sorted: upserts lock rows in key order, no deadlocks
                        await copy.write_row((*key, *table[key]))
                await cur.execute(statement)

    async def save_offsets(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        if not offsets:
            return
        keys = sorted(offsets)
        await self.conn.execute(
            sql.SAVE_OFFSETS, (group, [k[0] for k in keys], [k[1] for k in keys], [offsets[k] for k in keys])
        )

    async def set_listing_tags(self, updates: Sequence[TagUpdate]) -> list[TagUpdate]:
        payload = orjson.dumps(
            [
                {
                    "listing_id": u.listing_id,
                    "tags": list(u.tag_ids),
                    "deleted": u.deleted,
                    "model_version": u.model_version,
                    "p": u.partition,
                    "o": u.offset,
                    # Exploratory tag ids, or null when there are none (most listings: no array stored).
                    "ex": list(u.exploratory_tag_ids) if u.exploratory_tag_ids else None,
                }
                for u in updates
            ]
        ).decode()
        cur = await self.conn.execute(sql.SET_TAGS, (payload,))
        applied = {r[0] for r in await cur.fetchall()}
        return [u for u in updates if u.listing_id in applied]

    async def take_pending(self, tags_by_listing: Mapping[str, TagIds]) -> list[tuple[Fact, TagIds]]:
        cur = await self.conn.execute(
            b"SELECT DISTINCT listing_id FROM feedback_events WHERE tag_ids IS NULL AND listing_id = ANY(%s::text[])",
            (sorted(tags_by_listing),),
        )
        waiting = sorted(r[0] for r in await cur.fetchall())
        if not waiting:
            return []
        # No rollup step may run between this UPDATE and our commit (it would count a row under the
        # pending tag that we think is still queued, or the other way round).
        await self.conn.execute(b"SELECT pg_advisory_xact_lock(%s)", (sql.ROLLUP_LOCK_KEY,))
        payload = orjson.dumps([{"l": lid, "t": list(tags_by_listing[lid])} for lid in waiting]).decode()
        cur = await self.conn.execute(sql.TAKE_PENDING, (payload,))
        moved: list[tuple[Fact, TagIds]] = []
        for user_id, listing_id, type_, quantity, revenue, ts, queued in await cur.fetchall():
            if queued:
                continue  # not counted yet: its rollup counts it under the new tags
            fact = Fact(user_id, listing_id, type_, quantity, int(revenue.scaleb(4)), ts)
            moved.append((fact, tags_by_listing[listing_id]))
        return moved


@dataclass
class StoreStats:
    """Where a store's time went (seconds) and how often it had to retry."""

    batches: int = 0
    retries: int = 0
    db_seconds: float = 0.0
    partition_seconds: float = 0.0
    by_step: dict[str, float] = field(default_factory=dict)


class PostgresFeedbackStore:
    """Runs feedback units of work on a psycopg async pool, retrying through outages.

    Parameters
    ----------
    pool
        An opened :class:`psycopg_pool.AsyncConnectionPool` (see :func:`shared.db.async_pool`).
    group
        Consumer group whose offsets are stored with the counts.
    counters
        ``"inline"``: each batch adds its counts in its own transaction; ``"rollup"``: batches are
        queued and their counts added by :func:`services.feedback.rollup.rollup_step` (run by the worker).
    retry_s
        First wait after a failed transaction; doubles up to ``max_retry_s``.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        group: str,
        retry_s: float = 0.2,
        max_retry_s: float = 5.0,
        counters: CounterMode = "inline",
    ) -> None:
        self.pool = pool
        self.group = group
        self.counters = counters
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.stats = StoreStats()
        self._days: set[date] = set()
        # Connections (new ones after a Postgres restart) that have the staging tables.
        self._staged: weakref.WeakSet[psycopg.AsyncConnection[Any]] = weakref.WeakSet()

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[PostgresUnitOfWork]:
        async with self.pool.connection() as conn:
            if conn not in self._staged:
                await conn.execute(sql.STAGE_DDL)
                await conn.commit()
                self._staged.add(conn)
            async with conn.transaction():
                yield PostgresUnitOfWork(conn, self.counters)

    async def record_feedback(
        self, batch: Sequence[Consumed], offsets: Mapping[tuple[str, int], int] | None = None
    ) -> FeedbackResult:
        """Count a micro-batch exactly once (one transaction; retried until it commits)."""
        await self.ensure_partitions(c.event.ts for c in batch)

        async def work() -> FeedbackResult:
            async with self.unit_of_work() as uow:
                return await handle_feedback(uow, batch, self.group, offsets)

        return await self._retrying(work)

    async def record_tags(
        self, updates: Sequence[TagUpdate], topic: str, offsets: Mapping[tuple[str, int], int] | None = None
    ) -> TagsResult:
        """Store listings' tags and attribute their pending feedback (one transaction)."""

        async def work() -> TagsResult:
            async with self.unit_of_work() as uow:
                return await handle_tags(uow, updates, self.group, topic, offsets)

        return await self._retrying(work)

    async def stored_offsets(self) -> dict[tuple[str, int], int]:
        """Last counted offset per (topic, partition) of this store's group."""

        async def work() -> dict[tuple[str, int], int]:
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    'SELECT topic, partition, "offset" FROM feedback_offsets WHERE consumer_group = %s',
                    (self.group,),
                )
                return {(t, p): o for t, p, o in await cur.fetchall()}

        return await self._retrying(work)

    async def ensure_partitions(self, timestamps: Iterable[datetime]) -> None:
        """Create the archive's day partitions a batch needs (own short transaction)."""
        missing = sorted({ts.astimezone(UTC).date() for ts in timestamps} - self._days)
        if not missing:
            return
        t0 = time.perf_counter()

        async def work() -> None:
            async with self.pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (sql.PARTITION_LOCK_KEY,))
                for d in missing:
                    lo, hi = day_bounds(d)
                    await conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {partition_name(d)} PARTITION OF feedback_events"
                        f" FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')".encode()
                    )

        await self._retrying(work)
        self._days.update(missing)
        self.stats.partition_seconds += time.perf_counter() - t0

    async def _retrying(self, work: Callable[[], Awaitable[T]]) -> T:
        delay = self.retry_s
        t0 = time.perf_counter()
        while True:
            try:
                result = await work()
                self.stats.batches += 1
                self.stats.db_seconds += time.perf_counter() - t0
                return result
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
                log.warning("feedback: transaction aborted (%s); retrying", type(exc).__name__)
            except psycopg.OperationalError as exc:
                # Postgres restarting or unreachable: nothing was committed, so wait and redo it all.
                log.warning("feedback: Postgres unavailable (%s); retrying in %.1fs", exc, delay)
            self.stats.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_retry_s)


def recount_mismatches(url: str) -> dict[str, int]:
    """Rows where a count table differs from a recount from the archive (all zero when exact).

    An audit, not a hot path: blocking, full scans. Rows whose counters are all zero
    (pending counts moved away) are ignored, and so are batches still waiting for their rollup
    (one statement per table: counters and queue are read in one snapshot).
    """
    out: dict[str, int] = {}
    counters = ", ".join(COUNTER_FIELDS)
    nonzero = " OR ".join(f"{c} <> 0" for c in COUNTER_FIELDS)
    with psycopg.connect(url) as conn:
        for table, keys, _ in sql.COUNT_TABLES.values():
            owner = keys[0]
            recount = sql.recount_sql(owner, hourly="hour" in keys, source=sql.COUNTED_ARCHIVE)
            stored = f"SELECT {', '.join(keys)}, {counters} FROM {table} WHERE {nonzero}"
            row = conn.execute(
                f"SELECT (SELECT count(*) FROM ({stored} EXCEPT {recount}) a)"
                f" + (SELECT count(*) FROM ({recount} EXCEPT {stored}) b)".encode()
            ).fetchone()
            out[table] = int(row[0]) if row else -1
    return out


def prune_event_ids(url: str, older_than: datetime) -> int:
    """Forget the ids of events that happened and were archived before ``older_than``; returns how many.

    Since migration 7 the duplicate guard is the archive's unique key (event_id, ts), which goes
    with its day partitions, and ``feedback_event_ids`` is no longer written; this empties what
    workers before it left there. It was the exactly-once guard and grew by one btree entry
    per event forever. A redelivery (consumer restart, rebalance, producer retry) comes
    from the ``feedback`` topic, so ids older than the topic's retention (plus a margin)
    can no longer arrive twice; pick ``older_than`` accordingly. An event both older by
    time and by ingestion: partition pruning on ``ts`` keeps the scan to old days, and
    ``ingested_at`` spares a late-arriving old event. The archive is kept (it is what the
    counters are audited against).
    """
    with psycopg.connect(url) as conn:
        cur = conn.execute(
            "DELETE FROM feedback_event_ids i USING feedback_events e"
            " WHERE e.event_id = i.event_id AND e.ts < %s AND e.ingested_at < %s",
            (older_than, older_than),
        )
        return cur.rowcount
