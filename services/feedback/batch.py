"""The high-throughput engine: the same feedback service on aiokafka's batch fetch, without faust.

faust hands records to agents one at a time through its stream machinery; on this
machine that alone caps a worker at a few thousand records/s (see ``bench/feedback.py``).
This engine fetches whole batches (``getmany``) and runs the very same
:class:`~services.feedback.app.FeedbackService` (decode, dead letters, one Postgres
transaction per batch). Exactly-once is unchanged: event ids and offsets commit
with the counts; Kafka offsets are committed after Postgres, and on every
assignment the consumer seeks to the offsets stored in Postgres, so a restart
resumes exactly where the counts end (event-id dedup still guards duplicates the
producer sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from services.feedback.app import FeedbackConfig, FeedbackService, Record
from services.feedback.domain import resume_positions
from shared.settings import Settings

log = logging.getLogger(__name__)


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, start each partition right after the last offset Postgres has counted."""

    def __init__(self, consumer: AIOKafkaConsumer, service: FeedbackService) -> None:
        self.consumer = consumer
        self.service = service

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # Batches are committed to Postgres before the next poll: nothing in flight to flush.
        return None

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        store = await self.service.store()
        resume = resume_positions(((tp.topic, tp.partition) for tp in assigned), await store.stored_offsets())
        for (topic, partition), offset in resume.items():
            self.consumer.seek(TopicPartition(topic, partition), offset)
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


async def run_batch_consumer(
    settings: Settings, config: FeedbackConfig, stop: asyncio.Event | None = None
) -> FeedbackService:
    """Consume ``listing-tags`` and ``feedback`` until ``stop`` is set; returns the service (timings)."""
    stop = stop or asyncio.Event()
    service = FeedbackService(settings, config)
    topics = settings.topics
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=config.group,
        client_id=f"{settings.kafka.client_id}-feedback",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.kafka.session_timeout_ms,
        heartbeat_interval_ms=max(500, settings.kafka.session_timeout_ms // 6),
        max_poll_records=config.batch_size,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        security_protocol=settings.kafka.security_protocol,
    )
    consumer.subscribe([topics.tags, topics.feedback], listener=_SeekToStored(consumer, service))
    await consumer.start()
    try:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=int(config.within_s * 1000), max_records=config.batch_size)
            if not fetched:
                continue
            records: list[Record] = [r for batch in fetched.values() for r in batch]
            tags, feedback = _split(records, topics.tags)
            # Tags first: feedback in the same poll may be about these listings.
            if tags:
                await service.on_tags(tags)
            if feedback:
                await asyncio.gather(*(service.on_feedback(part) for part in by_writer(feedback, config.writers)))
            commit = {tp: OffsetAndMetadata(batch[-1].offset + 1, "") for tp, batch in fetched.items()}
            try:
                await consumer.commit(commit)
            except (CommitFailedError, KafkaError) as exc:
                # Postgres already holds these offsets; a failed Kafka commit only costs a re-seek.
                log.warning("feedback: Kafka commit failed (%s); Postgres offsets stay authoritative", exc)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        await service.close()
    return service
