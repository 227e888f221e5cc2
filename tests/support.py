"""Test helpers over the real broker: read a topic back, run a tagger in-process."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from shared.devstack.triton import TritonEndpoints
from shared.kafka import consumer_config, create_topics, producer_config
from shared.settings import KafkaSettings, Settings

# Taggers keep their label-embedding cache (1,646 labels, a minute of CPU inference) in the
# state dir; a persistent one (git-ignored) lets every test session after the first skip that.
TAGGER_STATE_DIR = Path(__file__).resolve().parents[1] / ".tagloop" / "tagger-tests"


def with_triton(settings: Settings, endpoints: TritonEndpoints) -> Settings:
    """The test's settings pointed at ``endpoints``, with the shared label-embedding cache."""
    triton = settings.triton.model_copy(update={"http_url": endpoints.http_url, "grpc_url": endpoints.grpc_url})
    TAGGER_STATE_DIR.mkdir(parents=True, exist_ok=True)
    return settings.model_copy(update={"triton": triton, "state_dir": TAGGER_STATE_DIR})


def read_topic(
    kafka: KafkaSettings, topic: str, expect: int, timeout_s: float = 60, partitions: int | None = None,
    until: Callable[[list[Message]], bool] | None = None, settle_s: float = 1.0,
) -> list[Message]:
    """All records of ``topic`` from offset 0 (assigned, no group join), waiting for ``expect``.

    After ``expect`` records (or ``until``) it keeps reading ``settle_s`` more, so extra
    (duplicate) records are seen rather than hidden.
    """
    consumer = Consumer(consumer_config(kafka, f"reader-{uuid.uuid4().hex[:8]}"))
    md = consumer.list_topics(topic, timeout=10).topics[topic]
    n = partitions or len(md.partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(n)])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                out.append(msg)
            done = until(out) if until else len(out) >= expect
            if done and settle_until is None:
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() >= settle_until:
                break
    finally:
        consumer.close()
    return out


def committed_offsets(kafka: KafkaSettings, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer(consumer_config(kafka, group))
    try:
        got = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in got}


class InProcessTagger:
    """A real tagger (pipeline + Triton backend) on its own event loop thread."""

    def __init__(self, settings: Settings, **options: object) -> None:
        from services.tagger.pipeline import TaggerOptions

        self.settings = settings
        self.options = TaggerOptions(**options)  # type: ignore[arg-type]
        self.loop = asyncio.new_event_loop()
        self.stop_event = asyncio.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="tagger-under-test", daemon=True)

    def _run(self) -> None:
        from services.tagger.main import serve

        try:
            self.loop.run_until_complete(serve(self.settings, self.options, stop=self.stop_event))
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def __enter__(self) -> InProcessTagger:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
            self.thread.join(90)
        if self.error is not None:
            raise self.error


def transactions_problem(kafka: KafkaSettings) -> str | None:
    """What is wrong with the broker's transactions, or None when they behave.

    Two aborted and two committed transactions of 5 records; a read_committed consumer
    that is already reading must see exactly the 10 committed records, in order.
    """
    topic = f"tx-probe-{uuid.uuid4().hex[:8]}"
    create_topics(kafka, [NewTopic(topic, num_partitions=1, replication_factor=1)])
    producer = Producer(producer_config(kafka, transactional_id=f"tx-{uuid.uuid4().hex[:6]}"))
    try:
        producer.init_transactions(15)
    except KafkaException as exc:
        return f"init_transactions failed: {exc}"
    reader = Consumer(consumer_config(kafka, f"g-{uuid.uuid4().hex[:6]}", read_committed=True))
    reader.assign([TopicPartition(topic, 0, 0)])
    expected: list[bytes] = []
    got: list[bytes] = []

    def read(window_s: float) -> None:
        end = time.monotonic() + window_s
        while time.monotonic() < end:
            msg = reader.poll(0.1)
            if msg is not None and not msg.error():
                got.append(msg.value())

    try:
        for round_ in range(4):
            producer.begin_transaction()
            for i in range(5):
                producer.produce(topic, key=b"k", value=f"r{round_}-{i}".encode(), partition=0)
            producer.flush(10)
            read(1.5)  # must see nothing of an open transaction
            if round_ % 2:
                producer.abort_transaction(15)
            else:
                producer.commit_transaction(15)
                expected += [f"r{round_}-{i}".encode() for i in range(5)]
        read(5)
    finally:
        reader.close()
    if got == expected:
        return None
    leaked = [v for v in got if v not in expected]
    return (f"read_committed saw {len(got)} records ({len(leaked)} from open or aborted transactions), "
            f"expected {len(expected)}")

