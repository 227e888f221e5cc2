"""Kafka adapters shared by every service: client configs, topics, dead letters.

Only confluent-kafka (librdkafka) and faust/aiokafka configuration lives here;
services build their own clients from these dicts in their bootstrap.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from shared.events import DeadLetter, encode
from shared.settings import KafkaSettings, Settings, TopicSettings


def client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security settings common to every librdkafka client."""
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": kafka.client_id,
        "security.protocol": kafka.security_protocol,
    }
    optional = {
        "sasl.mechanism": kafka.sasl_mechanism,
        "sasl.username": kafka.sasl_username,
        "sasl.password": kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
        "ssl.ca.location": kafka.ssl_cafile,
        "ssl.certificate.location": kafka.ssl_certfile,
        "ssl.key.location": kafka.ssl_keyfile,
    }
    conf.update({k: v for k, v in optional.items() if v is not None})
    return conf


def producer_config(kafka: KafkaSettings, transactional_id: str | None = None) -> dict[str, Any]:
    """An idempotent producer: retries never duplicate or reorder within a partition."""
    conf = client_config(kafka) | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    if transactional_id:
        conf["transactional.id"] = transactional_id
    return conf


def consumer_config(
    kafka: KafkaSettings, group_id: str, *, read_committed: bool = False, auto_offset_reset: str = "earliest"
) -> dict[str, Any]:
    """A consumer that never auto-commits: services commit only after their output exists."""
    return client_config(kafka) | {
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": auto_offset_reset,
        # Local tansu needs ~half the session timeout to admit a member; see KafkaSettings.
        "session.timeout.ms": kafka.session_timeout_ms,
        "heartbeat.interval.ms": max(500, kafka.session_timeout_ms // 6),
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        "partition.assignment.strategy": "cooperative-sticky",
    }


def aiokafka_url(kafka: KafkaSettings) -> str:
    """Broker URL in faust's form (``kafka://h1:9092;h2:9092``)."""
    return ";".join(f"kafka://{hp.strip()}" for hp in kafka.bootstrap_servers.split(",") if hp.strip())


def topic_specs(topics: TopicSettings) -> list[NewTopic]:
    """Every topic tagloop uses, with partitions and cleanup policy."""
    compacted = {"cleanup.policy": "compact"}
    n, rf = topics.partitions, topics.replication_factor
    return [
        NewTopic(topics.listings, num_partitions=n, replication_factor=rf),
        # A changelog keyed by listing: compaction keeps the latest tags, tombstones delete.
        NewTopic(topics.tags, num_partitions=n, replication_factor=rf, config=compacted),
        NewTopic(topics.feedback, num_partitions=n, replication_factor=rf),
        NewTopic(topics.dead_letter, num_partitions=1, replication_factor=rf),
        NewTopic(topics.user_affinity, num_partitions=n, replication_factor=rf, config=compacted),
    ]


def create_topics(
    kafka: KafkaSettings, specs: Iterable[NewTopic], timeout_s: float = 30.0
) -> dict[str, str]:
    """Create topics idempotently; returns ``{topic: "created" | "exists"}``."""
    admin = AdminClient(client_config(kafka))
    specs = list(specs)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    result = {s.topic: "exists" for s in specs if s.topic in existing}
    todo = [s for s in specs if s.topic not in existing]
    if todo:
        for topic, fut in admin.create_topics(todo, request_timeout=timeout_s).items():
            try:
                fut.result(timeout=timeout_s)
                result[topic] = "created"
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                result[topic] = "exists"
        wait_for_topics(kafka, [s.topic for s in todo], timeout_s)
    return result


def create_all_topics(settings: Settings) -> dict[str, str]:
    return create_topics(settings.kafka, topic_specs(settings.topics))


def wait_for_topics(kafka: KafkaSettings, names: Iterable[str], timeout_s: float = 30.0) -> None:
    """Block until metadata shows every topic with leaders for all partitions."""
    admin = AdminClient(client_config(kafka))
    wanted = set(names)
    deadline = time.monotonic() + timeout_s
    while True:
        md = admin.list_topics(timeout=timeout_s).topics
        ready = {t for t in wanted if t in md and md[t].error is None and md[t].partitions}
        if ready == wanted:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not ready: {sorted(wanted - ready)}")
        time.sleep(0.2)


def broker_ready(kafka: KafkaSettings, timeout_s: float = 2.0) -> bool:
    """True when the broker answers a metadata request."""
    try:
        md = AdminClient(client_config(kafka)).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return bool(md.brokers)


def dead_letter_for(msg: Message, error: BaseException, service: str) -> DeadLetter:
    """The dead-letter record for a consumed confluent-kafka message that could not be processed."""
    return make_dead_letter(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        key=msg.key(),
        value=msg.value(),
        error=error,
        service=service,
    )


def make_dead_letter(
    *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
    error: BaseException, service: str,
) -> DeadLetter:
    """The dead-letter record for any consumed message (confluent, aiokafka/faust or our own)."""
    return DeadLetter(
        original=value or b"",
        original_key=key,
        topic=topic,
        partition=partition,
        offset=offset,
        error_class=type(error).__name__,
        reason=_reason(error),
        service=service,
    )


def _reason(error: BaseException) -> str:
    # pydantic's ValidationError str() is multi-line and long; keep the useful head.
    text = " ".join(str(error).split())
    return text[:2000] or type(error).__name__


def publish_dead_letter(producer: Producer, topic: str, letter: DeadLetter, on_delivery: Any = None) -> None:
    """Produce a dead letter keyed like the original, so per-key order is kept there too."""
    producer.produce(topic, key=letter.original_key, value=encode(letter), on_delivery=on_delivery)
