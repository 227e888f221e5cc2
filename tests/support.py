"""Test helpers over the real broker: read a topic back, run a tagger in-process."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, Message, TopicPartition

from shared.kafka import consumer_config
from shared.settings import KafkaSettings, Settings


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
