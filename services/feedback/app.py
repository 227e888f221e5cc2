"""The feedback worker: a faust app counting ``feedback`` against ``listing-tags`` into Postgres.

Two agents, one micro-batch loop each:

* ``listing-tags`` -> :meth:`FeedbackService.on_tags`: the listing's latest tags go to
  Postgres (``feedback_listing_tags``, visible to every worker whatever partitions it
  owns) and feedback that waited for them is attributed.
* ``feedback`` -> :meth:`FeedbackService.on_feedback`: decode (msgspec fast path,
  :mod:`shared.fast_decode`), dead-letter what does not validate, then one Postgres
  transaction that skips what the stored offsets cover, archives (dropping producer
  duplicates), counts or queues the batch for the rollup, and stores offsets.

faust acks (and later commits to Kafka) a batch only after its transaction committed;
a batch redelivered after a crash is recognised by the offsets stored in Postgres, a
producer duplicate by the archive's key, so Postgres counts every event exactly once
whatever Kafka redelivers. With ``counters="rollup"`` the service also runs the rollup
loop (:class:`~services.feedback.rollup.Rollup`) that adds queued batches to the counters.
On every assignment the worker resumes from the offsets stored in Postgres
(:func:`resume_from_postgres`), not from Kafka's committed offsets, which lag behind
(faust commits every few seconds) or may be lost: nothing counted is read again, nothing
is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import faust
import orjson
from confluent_kafka import Producer
from faust.types import TP

from services.feedback.domain import Consumed, TagUpdate, max_offsets, resume_positions
from services.feedback.metrics import Metrics, Timings
from services.feedback.migrations import MIGRATIONS
from services.feedback.repository import CounterMode, PostgresFeedbackStore
from services.feedback.rollup import Rollup, RollupResult
from shared.db import apply_migrations, async_pool
from shared.dead_letters import DEFAULT_MAX_BYTES, make_dead_letter, publish_dead_letter
from shared.devstack.process import free_port
from shared.events import DeadLetter, DecodeError, TagEvent, decode_record, tombstone_id
from shared.fast_decode import decode_feedback as decode_feedback_record
from shared.kafka import faust_broker_config, producer_config
from shared.ops_http import OpsServer
from shared.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "feedback"
DEFAULT_GROUP = "tagloop-feedback"
APPLICATION_NAME = "tagloop-feedback"  # how the worker's sessions show in pg_stat_activity


class Record(Protocol):
    """What both engines hand over per consumed record (faust ``Message``, aiokafka ``ConsumerRecord``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class FeedbackConfig:
    """Knobs of the worker that are not shared settings.

    Parameters
    ----------
    group
        Kafka consumer group (the faust app id) and the key of stored offsets.
    batch_size, within_s
        Micro-batch: up to ``batch_size`` events or ``within_s`` seconds.
    web
        Run faust's web server (on a free loopback port) or not.
    writers
        Batch engine only: split each poll by partition over this many concurrent
        transactions (Postgres then works on several cores).
    counters
        ``"inline"``: each batch adds its counts in its own transaction (no lag); ``"rollup"``:
        batches only archive and queue, a rollup loop adds them to the counters (lag exported as
        ``feedback_counter_lag_seconds``, bounded by backpressure).
    """

    group: str = DEFAULT_GROUP
    batch_size: int = 10_000  # measured: Postgres CPU per event falls with batch size (bench/results/feedback.md)
    within_s: float = 0.5
    tags_batch_size: int = 2000
    writers: int = 1  # batch engine: concurrent transactions per poll (partitions split between them)
    web: bool = False
    stats_file: str | None = None  # where to write :class:`Timings` as JSON (benchmark)
    metrics_port: int | None = None  # serve Prometheus metrics on 127.0.0.1:<port>
    # Measured fastest while exact (bench/results/feedback.md): the rollup archives faster but, on two
    # cores, counts no faster than the batch itself does, and lags.
    counters: CounterMode = "inline"
    rollup_interval_s: float = 0.25  # how often the rollup looks at its queue
    # A rollup step once this many events wait, or the oldest waited this long: larger steps pre-combine
    # more events per counter row; the wait bounds the counters' lag (target p99 < 5 s).
    rollup_min_events: int = 10_000
    rollup_max_wait_s: float = 1.0
    rollup_max_events: int = 30_000  # per step: a step's duration adds to the lag of the batches it counts
    # Backpressure: no new batch is archived while the counters lag more than this (the events wait in
    # Kafka instead), so the lag stays bounded at full rate and the rate is the one the counters sustain.
    max_counter_lag_s: float = 1.5


@dataclass(frozen=True)
class DecodedBatch:
    """A feedback batch after decoding: what to count, what to dead-letter, offsets to store."""

    good: list[Consumed]
    bad: list[DeadLetter]
    offsets: dict[tuple[str, int], int]
    received: int


class FeedbackService:
    """The I/O shell around the domain: decoding, dead letters, the store, metrics."""

    def __init__(self, settings: Settings, config: FeedbackConfig) -> None:
        self.settings = settings
        self.config = config
        self.metrics = Metrics()
        self.timings = Timings()
        # /metrics, /healthz and /readyz (shared.ops_http), on the ops host (loopback unless a container says).
        self.ops = (
            OpsServer(self.metrics.registry, settings.ops.host, config.metrics_port, ready=self.ready,
                      name="feedback-http").start()
            if config.metrics_port else None
        )  # fmt: skip
        self._store: PostgresFeedbackStore | None = None
        self.rollup: Rollup | None = None
        self.counter_lag_s = 0.0  # largest lag of the last rollup step that counted batches
        self._producer: Producer | None = None
        self._lock = asyncio.Lock()

    async def store(self) -> PostgresFeedbackStore:
        # Opened lazily inside faust's loop: the pool must belong to the running loop.
        async with self._lock:
            if self._store is None:
                pool = async_pool(
                    self.settings,
                    max_size=self.config.writers + 2,  # + the rollup's connection
                    name="feedback",
                    kwargs={"application_name": APPLICATION_NAME},
                )
                await pool.open(wait=False)
                self._store = PostgresFeedbackStore(pool, self.config.group, counters=self.config.counters)
                if self.config.counters == "rollup":
                    self.rollup = Rollup(
                        pool, self.config.rollup_interval_s, on_step=self._rolled_up,
                        min_events=self.config.rollup_min_events, max_wait_s=self.config.rollup_max_wait_s,
                        max_events=self.config.rollup_max_events,
                    )  # fmt: skip
                    self.rollup.start()
            return self._store

    def ready(self) -> tuple[bool, str]:
        """Readiness: Postgres pool open; the detail says how far the counters lag (rollup mode)."""
        if self._store is None:
            return False, "no Postgres connection yet"
        return True, f"counters lag {self.counter_lag_s:.2f}s" if self.rollup is not None else ""

    def _rolled_up(self, result: RollupResult, elapsed: float) -> None:
        if not result.batches:
            return
        self.timings.rollup += elapsed
        self.timings.counter_lags_s.extend(result.lags_s)
        self.metrics.rollup_seconds.observe(elapsed)
        for lag in result.lags_s:
            self.metrics.counter_lag.observe(lag)
        self.counter_lag_s = max(result.lags_s, default=0.0)
        self.metrics.counter_lag_max.set(self.counter_lag_s)
        if self.config.stats_file:
            self._write_stats(self.config.stats_file)

    async def close(self) -> None:
        if self.rollup is not None:
            await self.rollup.stop()
        if self._store is not None:
            await self._store.pool.close()
        if self.ops is not None:
            self.ops.stop()
        if self._producer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, 10)

    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(producer_config(self.settings.kafka))
        return self._producer

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Publish and wait for delivery: the batch is acked (and may be committed) right after."""
        t0 = time.perf_counter()
        producer = self.producer()
        failures: list[Any] = []
        for letter in letters:
            publish_dead_letter(
                producer,
                self.settings.topics.dead_letter,
                letter,
                on_delivery=lambda err, _msg: failures.append(err) if err else None,
            )
        remaining = await asyncio.get_running_loop().run_in_executor(None, producer.flush, 30)
        if remaining or failures:
            raise RuntimeError(f"dead letters not delivered: {remaining} pending, errors {failures[:3]}")
        self.metrics.events.labels("dead_letter").inc(len(letters))
        self.timings.dead_letter += time.perf_counter() - t0

    async def on_feedback(self, events: Sequence[Record]) -> None:
        await self.write_feedback(self.prepare_feedback(events))

    def prepare_feedback(self, events: Sequence[Record]) -> DecodedBatch:
        """The CPU half of a feedback batch (no I/O): the batch engine runs it while Postgres
        is still writing the previous batch."""
        if self.timings.first_batch is None:
            self.timings.first_batch = time.monotonic()
        t0 = time.perf_counter()
        good, bad = decode_feedback(events, self.settings.kafka.max_record_bytes)
        self.timings.decode += time.perf_counter() - t0
        return DecodedBatch(good, bad, consumed_offsets(events), len(events))

    async def write_feedback(self, batch: DecodedBatch) -> None:
        """Dead letters, then one Postgres transaction (ids, archive, counts, offsets)."""
        if batch.bad:
            await self.dead_letter(batch.bad)
        store = await self.store()
        if self.rollup is not None:
            self.timings.waited_for_rollup += await self.rollup.wait_fresh(self.config.max_counter_lag_s)
        t1 = time.perf_counter()
        result = await store.record_feedback(batch.good, batch.offsets)
        elapsed = time.perf_counter() - t1
        self.timings.postgres += elapsed
        self.timings.batches += 1
        self.timings.events += batch.received
        self.metrics.batch_seconds.labels("feedback").observe(elapsed)
        self.metrics.events.labels("counted").inc(result.counted)
        self.metrics.events.labels("duplicate").inc(result.duplicates)
        self.metrics.pending.inc(result.pending)
        if self.config.stats_file:
            self._write_stats(self.config.stats_file)

    def _write_stats(self, path: str) -> None:
        # Small file, written after a batch committed: cheap next to the transaction.
        store = self._store
        data = self.timings.as_dict() | {
            "store_retries": store.stats.retries if store else 0,
            "partition_s": store.stats.partition_seconds if store else 0.0,
        }
        Path(path).write_bytes(orjson.dumps(data))

    async def on_tags(self, events: Sequence[Record]) -> None:
        updates, bad = decode_tags(events, self.settings.kafka.max_record_bytes)
        if bad:
            await self.dead_letter(bad)
        store = await self.store()
        t0 = time.perf_counter()
        result = await store.record_tags(updates, self.settings.topics.tags, consumed_offsets(events))
        self.metrics.batch_seconds.labels("tags").observe(time.perf_counter() - t0)
        self.metrics.reattributed.inc(result.reattributed)


def consumed_offsets(records: Sequence[Record]) -> dict[tuple[str, int], int]:
    """Highest offset per partition of a batch, dead-lettered records included."""
    return max_offsets((r.topic, r.partition, r.offset) for r in records)


def _letter(message: Record, exc: BaseException, max_bytes: int) -> DeadLetter:
    return make_dead_letter(
        topic=message.topic, partition=message.partition, offset=message.offset, key=message.key,
        value=message.value, error=exc, service=SERVICE, max_bytes=max_bytes,
    )


def decode_feedback(
    records: Sequence[Record], max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[list[Consumed], list[DeadLetter]]:
    """Validate raw feedback records (key = ``user_id``); what does not validate becomes a dead letter.

    The fast decoder (:func:`shared.fast_decode.decode_feedback`) accepts and rejects exactly what
    ``decode_record(FeedbackEvent, ...)`` does, with the same reasons for what it rejects.
    """
    good: list[Consumed] = []
    bad: list[DeadLetter] = []
    append = good.append
    for m in records:
        try:
            append(Consumed(decode_feedback_record(m.key, m.value), m.topic, m.partition, m.offset))
        except DecodeError as exc:
            bad.append(_letter(m, exc, max_bytes))
    return good, bad


def decode_tags(
    records: Sequence[Record], max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[list[TagUpdate], list[DeadLetter]]:
    """Tag records to updates; a tombstone (no value) deletes the listing's tags."""
    updates: list[TagUpdate] = []
    bad: list[DeadLetter] = []
    for m in records:
        try:
            if m.value is None:
                updates.append(TagUpdate.tombstone(tombstone_id(m.key), m.partition, m.offset))
            else:
                updates.append(TagUpdate.from_event(decode_record(TagEvent, m.key, m.value), m.partition, m.offset))
        except DecodeError as exc:
            bad.append(_letter(m, exc, max_bytes))
    return updates, bad


def micro_batches(stream: faust.StreamT, max_: int, within_s: float) -> AsyncIterator[Sequence[faust.types.EventT]]:
    """``stream.take`` with the events (offsets) kept; acked only when the caller asks for the next."""
    return cast(faust.Stream, stream).take_events(max_, within=within_s)


async def resume_from_postgres(consumer: Any, service: FeedbackService) -> dict[tuple[str, int], int]:
    """Commit to Kafka, for each assigned partition, the position Postgres has counted up to.

    Connected to faust's ``on_rebalance_complete`` signal, which faust sends just before
    it seeks every assigned partition to its committed offset (``Consumer.perform_seek``).
    Committing Postgres' positions first makes faust itself resume there, with its own
    ack/commit bookkeeping consistent; a seek made here would be undone by that
    ``perform_seek``. Returns the positions committed.
    """
    store = await service.store()
    assigned = [(tp.topic, tp.partition) for tp in consumer.assignment()]
    resume = resume_positions(assigned, await store.stored_offsets())
    if resume:
        # faust has no public call to commit chosen offsets; _commit is what its own commits end in.
        committed = await consumer._commit({TP(t, p): o for (t, p), o in resume.items()})
        if not committed:
            log.warning("feedback: could not commit the Postgres offsets to Kafka; event-id dedup still holds")
    log.info("feedback: resuming from Postgres offsets %s", resume)
    return resume


def build_app(settings: Settings, config: FeedbackConfig | None = None) -> faust.App:
    """The faust app of the feedback service; ``app.feedback_service`` holds its state."""
    config = config or FeedbackConfig()
    service = FeedbackService(settings, config)
    datadir = settings.state_dir / "faust" / config.group
    datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    app = faust.App(
        config.group,
        # Broker URL, client id and credentials (SASL/SSL): faust passes them to every aiokafka client.
        **faust_broker_config(settings.kafka, client_id=f"{settings.kafka.client_id}-feedback"),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=config.web,
        web_host="127.0.0.1",
        web_port=free_port(),
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(0.5, settings.kafka.session_timeout_ms / 6000),
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.topics.partitions,
        topic_allow_declare=False,
        datadir=str(datadir),
        stream_buffer_maxsize=max(4096, config.batch_size * 2),
        broker_max_poll_records=config.batch_size,
    )
    feedback_topic = app.topic(settings.topics.feedback, value_serializer="raw", key_serializer="raw")
    tags_topic = app.topic(settings.topics.tags, value_serializer="raw", key_serializer="raw")

    @app.agent(tags_topic, name="feedback-listing-tags")
    async def listing_tags(stream: faust.StreamT) -> None:
        async for events in micro_batches(stream, config.tags_batch_size, config.within_s):
            await service.on_tags([e.message for e in events])

    @app.agent(feedback_topic, name="feedback-events")
    async def feedback(stream: faust.StreamT) -> None:
        async for events in micro_batches(stream, config.batch_size, config.within_s):
            await service.on_feedback([e.message for e in events])

    async def resume(sender: faust.App, **_: Any) -> None:
        await resume_from_postgres(sender.consumer, service)

    # mode's handler type does not admit an async def with a typed sender; it is called as one.
    app.on_rebalance_complete.connect(resume)  # type: ignore[arg-type]

    app.feedback_service = service  # type: ignore[attr-defined]
    return app


def migrate(settings: Settings) -> list[str]:
    """Apply the feedback schema; returns the names applied now."""
    return [m.name for m in apply_migrations(settings, MIGRATIONS)]
