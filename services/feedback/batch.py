"""The high-throughput engine: the same feedback service on aiokafka's batch fetch, without faust.

faust hands records to agents one at a time through its stream machinery; on this
machine that alone caps a worker at a few thousand records/s (see ``bench/feedback.py``).
This engine fetches whole batches (``getmany``) and runs the very same
:class:`~services.feedback.app.FeedbackService` (decode, dead letters, one Postgres
transaction per batch), two polls deep: while one poll's transaction runs in Postgres,
the next poll is fetched and decoded (transactions still run one after another, in
poll order). Exactly-once: the partitions' offsets commit with the archive rows (and
counts or rollup-queue entries); Kafka offsets are committed after Postgres, and on every
assignment the consumer seeks to the offsets stored in Postgres, so a restart resumes
exactly where the archive ends; a transaction also skips records at or below its
partitions' stored offsets, and the archive's key drops duplicates the producer sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from services.feedback.app import DecodedBatch, FeedbackConfig, FeedbackService, Record
from services.feedback.domain import resume_positions
from shared.kafka import aiokafka_config
from shared.settings import Settings

log = logging.getLogger(__name__)


class _InFlight:
    """The one poll being written (Postgres, then the Kafka commit) while the next is fetched and decoded."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    async def wait(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            await task

    async def replace(self, work: Coroutine[Any, Any, None]) -> None:
        """Wait for the previous poll's writes, then start ``work``: transactions stay in poll order."""
        await self.wait()
        self.task = asyncio.create_task(work)


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, start each partition right after the last offset Postgres has counted."""

    def __init__(self, consumer: AIOKafkaConsumer, service: FeedbackService, in_flight: _InFlight) -> None:
        self.consumer = consumer
        self.service = service
        self.in_flight = in_flight

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # Let the poll being written commit first: the next owner (or we, on re-assignment)
        # then reads offsets that include it, and re-reads nothing.
        await self.in_flight.wait()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        # Paused before the first await: the fetcher already runs from Kafka's committed (or earliest)
        # offsets, and getmany must hand out nothing from there while Postgres is asked.
        assigned = list(assigned)
        self.consumer.pause(*assigned)
        try:
            store = await self.service.store()
            resume = resume_positions([(tp.topic, tp.partition) for tp in assigned], await store.stored_offsets())
            for (topic, partition), offset in resume.items():
                self.consumer.seek(TopicPartition(topic, partition), offset)  # also drops what was prefetched
        finally:
            # Even if the seek failed: reading from Kafka's position re-reads, and the stored offsets skip that.
            self.consumer.resume(*assigned)
        log.info("feedback: assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))


def _split(records: Sequence[Record], topic: str) -> tuple[list[Record], list[Record]]:
    mine = [r for r in records if r.topic == topic]
    rest = [r for r in records if r.topic != topic]
    return mine, rest


def by_writer(records: Sequence[Record], writers: int) -> list[list[Record]]:
    """Split a poll by partition into up to ``writers`` groups, each written in its own transaction.

    A partition always goes to one group, so each transaction's stored offsets are its own.
    """
    groups: dict[int, list[Record]] = {}
    for r in records:
        groups.setdefault(r.partition % max(1, writers), []).append(r)
    return [groups[k] for k in sorted(groups)]


def build_consumer(settings: Settings, config: FeedbackConfig) -> AIOKafkaConsumer:
    """The engine's consumer (not started); connection and security come from :func:`aiokafka_config`.

    Must be called inside a running event loop (aiokafka binds the consumer to it).
    """
    return AIOKafkaConsumer(
        **aiokafka_config(settings.kafka, client_id=f"{settings.kafka.client_id}-feedback"),
        group_id=config.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.kafka.session_timeout_ms,
        heartbeat_interval_ms=max(500, settings.kafka.session_timeout_ms // 6),
        max_poll_records=config.batch_size,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )


async def run_batch_consumer(
    settings: Settings, config: FeedbackConfig, stop: asyncio.Event | None = None
) -> FeedbackService:
    """Consume ``listing-tags`` and ``feedback`` until ``stop`` is set; returns the service (timings)."""
    stop = stop or asyncio.Event()
    service = FeedbackService(settings, config)
    topics = settings.topics
    consumer = build_consumer(settings, config)
    in_flight = _InFlight()
    consumer.subscribe([topics.tags, topics.feedback], listener=_SeekToStored(consumer, service, in_flight))
    await consumer.start()

    async def write(tags: list[Record], feedback: list[DecodedBatch], commit: dict[TopicPartition, Any]) -> None:
        # Tags first: feedback in the same poll may be about these listings.
        if tags:
            await service.on_tags(tags)
        if feedback:
            await asyncio.gather(*(service.write_feedback(part) for part in feedback))
        try:
            await consumer.commit(commit)
        except (CommitFailedError, KafkaError) as exc:
            # Postgres already holds these offsets; a failed Kafka commit only costs a re-seek.
            log.warning("feedback: Kafka commit failed (%s); Postgres offsets stay authoritative", exc)

    try:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=int(config.within_s * 1000), max_records=config.batch_size)
            if not fetched:
                continue
            records: list[Record] = [r for batch in fetched.values() for r in batch]
            tags, feedback = _split(records, topics.tags)
            # Decoding (worker CPU) overlaps the previous poll's transaction (Postgres CPU).
            decoded = [service.prepare_feedback(part) for part in by_writer(feedback, config.writers)]
            commit = {tp: OffsetAndMetadata(batch[-1].offset + 1, "") for tp, batch in fetched.items()}
            await in_flight.replace(write(tags, decoded, commit))
        await in_flight.wait()
    finally:
        with contextlib.suppress(Exception):
            await in_flight.wait()  # only after an error above: the last poll's writes may still finish
        with contextlib.suppress(Exception):
            await consumer.stop()
        await service.close()
    return service
