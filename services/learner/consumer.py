"""Kafka adapter of the learner: reads ``feedback`` and ``listing-tags`` from explicit offsets.

The learner does not trust committed group offsets: it *assigns* every partition
of both topics itself and seeks to the offsets stored in its latest checkpoint,
so the model and what it has read can never disagree. Group commits are made
after each checkpoint only so that lag is visible to ordinary Kafka tooling.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from services.learner.checkpoint import Offsets
from services.learner.model import AffinityModel
from shared.events import DecodeError, FeedbackEvent, TagEvent, decode_record, tombstone_id
from shared.kafka import consumer_config
from shared.settings import Settings

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """The broker reported an error that is not about one message."""


@dataclass
class Applied:
    """What one batch did to the model."""

    touched_users: set[str] = field(default_factory=set)
    events: int = 0
    rejected: list[tuple[Message, Exception]] = field(default_factory=list)


class FeedbackSource:
    """Consumer of both topics assigned at explicit positions, tracking the next offset of each partition."""

    def __init__(self, settings: Settings, group_id: str, offsets: Offsets, timeout_s: float = 30.0):
        self.topics = (settings.topics.tags, settings.topics.feedback)
        # A short fetch wait: lag behind the topic is what the learner is measured on.
        self.consumer = Consumer(consumer_config(settings.kafka, group_id) | {"fetch.wait.max.ms": 100})
        self.positions: Offsets = {t: dict(offsets.get(t, {})) for t in self.topics}
        assignment = []
        for topic in self.topics:
            meta = self.consumer.list_topics(topic, timeout=timeout_s).topics[topic]
            if meta.error is not None:
                raise SourceError(f"topic {topic}: {meta.error}")
            for partition in sorted(meta.partitions):
                start = self.positions[topic].get(partition, OFFSET_BEGINNING)
                assignment.append(TopicPartition(topic, partition, start))
        self.consumer.assign(assignment)

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        msgs = self.consumer.consume(num_messages=max_messages, timeout=timeout_s)
        out = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise SourceError(str(err))
                log.warning("consumer error: %s", err)
                continue
            out.append(msg)
        return out

    def advance(self, msg: Message) -> None:
        self.positions[msg.topic() or ""][msg.partition() or 0] = (msg.offset() or 0) + 1

    def snapshot(self) -> Offsets:
        return {t: dict(parts) for t, parts in self.positions.items()}

    def commit(self, positions: Offsets) -> None:
        """Best-effort group commit of checkpointed positions (monitoring only: lag shows in Kafka tools)."""
        offsets = [TopicPartition(t, p, o) for t, parts in positions.items() for p, o in parts.items()]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.info("group commit failed (positions live in the checkpoint): %s", exc)

    def close(self) -> None:
        self.consumer.close()


def apply(model: AffinityModel, msgs: Iterable[Message], tags_topic: str) -> Applied:
    """Decode and learn each message in order; undecodable ones are returned for dead-lettering.

    The same record rules as every consumer (:func:`shared.events.decode_record`): a record
    under a key that is not its event's id is rejected, not learned.
    """
    out = Applied()
    for msg in msgs:
        try:
            if msg.topic() == tags_topic:
                value = msg.value()
                if value is None:  # tombstone: the listing is gone
                    model.set_listing_tags(tombstone_id(msg.key()), None)
                    continue
                tag_event = decode_record(TagEvent, msg.key(), value)
                out.touched_users |= model.set_listing_tags(
                    tag_event.listing_id, [(t.tag_id, t.score) for t in tag_event.tags]
                )
            else:
                event = decode_record(FeedbackEvent, msg.key(), msg.value())
                out.touched_users |= model.learn(event)
                out.events += 1
        except DecodeError as exc:
            out.rejected.append((msg, exc))
    return out
