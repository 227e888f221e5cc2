"""Shared helpers of the learner integration tests (no tests here): produce, read, wait for checkpoints."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from services.learner.checkpoint import Checkpoint, PostgresCheckpoints
from shared.events import FeedbackEvent, FeedbackType, Tag, TagEvent, TagKind, TagSource, encode
from shared.kafka import consumer_config, producer_config
from shared.settings import Settings

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T = TypeVar("T")


def tag_event(listing: str, tags: Iterable[str]) -> TagEvent:
    return TagEvent(
        listing_id=listing,
        tags=[Tag(tag_id=t, name=t, kind=TagKind.CATEGORY, score=0.9, source=TagSource.ZERO_SHOT) for t in tags],
        model_name="test",
        model_version="1",
        source_event_id=f"src-{listing}",
    )


def feedback(i: int, user: str, listing: str, kind: FeedbackType = FeedbackType.CLICK) -> FeedbackEvent:
    return FeedbackEvent(event_id=f"ev-{i}", user_id=user, listing_id=listing, type=kind, ts=T0 + timedelta(seconds=i))


def produce(settings: Settings, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    producer = Producer(producer_config(settings.kafka))
    n = 0
    for key, value in records:
        producer.produce(topic, key=key, value=value)
        n += 1
        if n % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    return n


def produce_tags(settings: Settings, listings: dict[str, list[str]]) -> None:
    produce(
        settings,
        settings.topics.tags,
        ((lid.encode(), encode(tag_event(lid, tags))) for lid, tags in listings.items()),
    )


def produce_feedback(settings: Settings, events: Iterable[FeedbackEvent]) -> int:
    return produce(settings, settings.topics.feedback, ((e.user_id.encode(), encode(e)) for e in events))


def read_all(settings: Settings, topic: str, expect: int, timeout_s: float = 30.0) -> list[tuple[bytes | None, bytes]]:
    """Every record of ``topic`` from the beginning, waiting until at least ``expect`` arrived."""
    consumer = Consumer(consumer_config(settings.kafka, f"reader-{topic}-{time.monotonic_ns()}"))
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
    out: list[tuple[bytes | None, bytes]] = []

    def take(timeout: float) -> None:
        for msg in consumer.consume(500, timeout=timeout):
            value = msg.value()
            if msg.error() is None and value is not None:
                out.append((msg.key(), value))

    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            take(0.5)
            if len(out) >= expect:
                take(1.0)  # give stragglers (e.g. duplicates) a moment to show up too
                return out
    finally:
        consumer.close()
    return out


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.2) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def checkpoint_with(repo: PostgresCheckpoints, events_seen: int) -> Callable[[], Checkpoint | None]:
    def check() -> Checkpoint | None:
        if repo.latest_id() is None:
            return None
        cp = repo.latest()
        return cp if cp is not None and cp.model.counters.events_seen >= events_seen else None

    return check


def learner_env(settings: Settings, name: str, tmp: Path) -> dict[str, str]:
    """Environment of a learner subprocess on the test's broker, database and topics."""
    t = settings.topics
    return os.environ | {
        "TAGLOOP_STATE_DIR": str(tmp),
        "TAGLOOP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "TAGLOOP_DATABASE_URL": settings.database_url,
        "TAGLOOP_TOPICS__TAGS": t.tags,
        "TAGLOOP_TOPICS__FEEDBACK": t.feedback,
        "TAGLOOP_TOPICS__DEAD_LETTER": t.dead_letter,
        "TAGLOOP_TOPICS__USER_AFFINITY": t.user_affinity,
        "TAGLOOP_LEARNER__NAME": name,
        "TAGLOOP_LEARNER__CHECKPOINT_EVERY": "1000",
        "TAGLOOP_LEARNER__CHECKPOINT_INTERVAL_S": "1.0",
        "PYTHONUNBUFFERED": "1",
    }
