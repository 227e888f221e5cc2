"""Replay a topic range (by offset or by time) into another topic or a JSON-lines file.

Used to rebuild training sets from `feedback`/`listing-tags`, or to re-tag the catalog by
replaying `listings` into the tagger's input. Records keep their key, value and timestamp.

By time, the start offset comes from offsets-for-times and is then checked record by
record: brokers that answer offsets-for-times coarsely (tansu returns 0) still replay
exactly the records with ``ts >= start``. The end is a time, an offset, or "idle": no new
record for ``idle_s`` (high watermarks are not trusted; tansu reports them too low).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from shared.kafka import consumer_config, producer_config
from shared.settings import KafkaSettings


@dataclass(frozen=True)
class ReplayRange:
    """Where to start and stop; offsets apply to every partition."""

    from_offset: int | None = None
    from_time: datetime | None = None
    to_offset: int | None = None  # exclusive
    to_time: datetime | None = None  # exclusive
    idle_s: float = 5.0

    def __post_init__(self) -> None:
        if self.from_offset is not None and self.from_time is not None:
            raise ValueError("give a start offset or a start time, not both")

    def start_ms(self) -> int | None:
        return int(self.from_time.timestamp() * 1000) if self.from_time else None

    def end_ms(self) -> int | None:
        return int(self.to_time.timestamp() * 1000) if self.to_time else None


@dataclass
class ReplaySummary:
    """What a replay copied: counts, bytes, the time span of the records, and how long it took."""

    records: int = 0
    tombstones: int = 0
    bytes: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None
    seconds: float = 0.0

    def add(self, msg: Message) -> None:
        value, ts = msg.value(), msg.timestamp()[1]
        self.records += 1
        self.tombstones += value is None
        self.bytes += len(value or b"") + len(msg.key() or b"")
        p = msg.partition() or 0
        self.per_partition[p] = self.per_partition.get(p, 0) + 1
        self.first_ts_ms = ts if self.first_ts_ms is None else min(self.first_ts_ms, ts)
        self.last_ts_ms = ts if self.last_ts_ms is None else max(self.last_ts_ms, ts)

    def as_dict(self) -> dict[str, object]:
        def iso(ms: int | None) -> str | None:
            return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms is not None else None

        return {
            "records": self.records, "tombstones": self.tombstones, "bytes": self.bytes,
            "per_partition": {str(k): v for k, v in sorted(self.per_partition.items())},
            "first_record": iso(self.first_ts_ms), "last_record": iso(self.last_ts_ms),
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.records / self.seconds, 1) if self.seconds > 0 else None,
        }


class RateLimit:
    """At most ``per_s`` records a second on average (None: unlimited), by sleeping before a record is due."""

    def __init__(self, per_s: float | None) -> None:
        self.per_s = per_s
        self.started = time.monotonic()
        self.sent = 0

    def wait(self) -> None:
        if self.per_s:
            due = self.started + self.sent / self.per_s
            if (delay := due - time.monotonic()) > 0:
                time.sleep(delay)
        self.sent += 1


def start_positions(consumer: Consumer, topic: str, rng: ReplayRange) -> list[TopicPartition]:
    md = consumer.list_topics(topic, timeout=10).topics[topic]
    parts = sorted(md.partitions)
    if rng.from_time is not None:
        asked = [TopicPartition(topic, p, rng.start_ms() or 0) for p in parts]
        found = consumer.offsets_for_times(asked, timeout=10)
        # -1 means "no record at or after that time": start at the end of nothing, i.e. skip.
        return [TopicPartition(topic, tp.partition, max(tp.offset, 0)) for tp in found]
    return [TopicPartition(topic, p, rng.from_offset or 0) for p in parts]


def read_range(kafka: KafkaSettings, topic: str, rng: ReplayRange) -> Iterator[Message]:
    """Records of ``topic`` within ``rng``, partition by partition interleaved as they arrive."""
    consumer = Consumer(consumer_config(kafka, f"tagloop-replay-{uuid.uuid4().hex[:8]}"))
    try:
        consumer.assign(start_positions(consumer, topic, rng))
        done: set[int] = set()
        n_parts = len(consumer.assignment())
        last_record = time.monotonic()
        start_ms, end_ms = rng.start_ms(), rng.end_ms()
        while len(done) < n_parts and time.monotonic() - last_record < rng.idle_s:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            last_record = time.monotonic()
            # A consumed record always has a partition and an offset (None only on produced ones).
            p, offset, ts = msg.partition() or 0, msg.offset() or 0, msg.timestamp()[1]
            if p in done:
                continue
            if (rng.to_offset is not None and offset >= rng.to_offset) or (end_ms is not None and ts >= end_ms):
                done.add(p)
                consumer.pause([TopicPartition(topic, p)])
                continue
            if start_ms is not None and ts < start_ms:
                continue  # coarse offsets-for-times: skip what is before the start time
            yield msg
    finally:
        consumer.close()


def to_json_line(msg: Message) -> bytes:
    value, key = msg.value(), msg.key()
    return orjson.dumps({
        "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
        "timestamp_ms": msg.timestamp()[1],
        "key": key.decode("utf-8", "replace") if key is not None else None,
        "value_b64": base64.b64encode(value).decode() if value is not None else None,
    }) + b"\n"


def replay_to_topic(kafka: KafkaSettings, source: str, target: str, rng: ReplayRange,
                    on_record: Callable[[Message], None] | None = None, rate_per_s: float | None = None,
                    summary: ReplaySummary | None = None) -> int:
    """Copy the range to ``target`` keeping key, value (tombstones too) and timestamp.

    Never joins a consumer group (partitions are assigned), so live consumers of ``source``
    are not rebalanced; ``rate_per_s`` keeps a backfill from starving live traffic.
    """
    if target == source:
        raise ValueError("replaying a topic into itself would loop")
    producer = Producer(producer_config(kafka))
    summary = summary if summary is not None else ReplaySummary()
    started, limit, failed = time.monotonic(), RateLimit(rate_per_s), []
    for msg in read_range(kafka, source, rng):
        limit.wait()
        while True:
            try:
                producer.produce(target, key=msg.key(), value=msg.value(), timestamp=msg.timestamp()[1],
                                 on_delivery=lambda err, _m: failed.append(err) if err else None)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        summary.add(msg)
        if on_record:
            on_record(msg)
    if producer.flush(30) or failed:
        raise RuntimeError(f"replay: not every record was delivered ({failed[:3]})")
    summary.seconds = time.monotonic() - started
    return summary.records


def replay_to_file(kafka: KafkaSettings, source: str, path: Path, rng: ReplayRange,
                   on_record: Callable[[Message], None] | None = None, rate_per_s: float | None = None,
                   summary: ReplaySummary | None = None) -> int:
    """Write the range as JSON lines (value base64-encoded, so any bytes survive)."""
    summary = summary if summary is not None else ReplaySummary()
    started, limit = time.monotonic(), RateLimit(rate_per_s)
    with path.open("wb") as out:
        for msg in read_range(kafka, source, rng):
            limit.wait()
            out.write(to_json_line(msg))
            summary.add(msg)
            if on_record:
                on_record(msg)
    summary.seconds = time.monotonic() - started
    return summary.records
