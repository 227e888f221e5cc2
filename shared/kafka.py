"""Kafka adapters shared by every service: client configs and topics.

The one place that turns :class:`~shared.settings.KafkaSettings` (connection and
security) into client configuration, for all three client families:
confluent-kafka (:func:`client_config`, :func:`consumer_config`,
:func:`producer_config`), aiokafka (:func:`aiokafka_config`) and faust
(:func:`faust_broker_config`). Services build their own clients from these in
their bootstrap. The SASL password leaves its ``SecretStr`` only here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from shared.settings import KafkaSettings, Settings, TopicSettings

if TYPE_CHECKING:
    import ssl

    from faust.types.auth import CredentialsT

_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# OAUTHBEARER needs a token callback, which settings cannot hold.
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI")


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
        "sasl.password": _password(kafka),
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
        "message.max.bytes": kafka.max_record_bytes,
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


def aiokafka_config(kafka: KafkaSettings, client_id: str | None = None) -> dict[str, Any]:
    """Connection and security keyword arguments for ``AIOKafkaConsumer`` / ``AIOKafkaProducer``.

    Parameters
    ----------
    kafka
        The Kafka settings; every security field is applied.
    client_id
        Overrides ``kafka.client_id`` (e.g. ``tagloop-feedback``).

    Examples
    --------
    >>> aiokafka_config(KafkaSettings(bootstrap_servers="k1:9092"))
    {'bootstrap_servers': 'k1:9092', 'client_id': 'tagloop', 'security_protocol': 'PLAINTEXT'}
    """
    protocol = _protocol(kafka)
    conf: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": client_id or kafka.client_id,
        "security_protocol": protocol,
    }
    if protocol.startswith("SASL_"):
        conf |= {
            "sasl_mechanism": _sasl_mechanism(kafka),
            "sasl_plain_username": kafka.sasl_username,
            "sasl_plain_password": _password(kafka),
        }
    context = ssl_context(kafka)
    if context is not None:
        conf["ssl_context"] = context
    return conf


def faust_credentials(kafka: KafkaSettings) -> CredentialsT | None:
    """faust's ``broker_credentials`` for these settings; ``None`` for PLAINTEXT.

    faust hands them to every aiokafka consumer and producer it builds
    (``faust.transport.drivers.aiokafka.credentials_to_aiokafka_auth``); the TLS
    context travels inside them, which is what makes faust pick ``SASL_SSL``.
    """
    import faust  # faust is heavy: only the feedback service imports it

    protocol, context = _protocol(kafka), ssl_context(kafka)
    if protocol.startswith("SASL_"):
        mechanism = _sasl_mechanism(kafka)
        if mechanism == "GSSAPI":
            return faust.GSSAPICredentials(ssl_context=context)
        return faust.SASLCredentials(
            username=kafka.sasl_username, password=_password(kafka), mechanism=mechanism, ssl_context=context
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def faust_broker_config(kafka: KafkaSettings, client_id: str | None = None) -> dict[str, Any]:
    """The broker keyword arguments of ``faust.App``: URL, client id and credentials."""
    return {
        "broker": aiokafka_url(kafka),
        "broker_client_id": client_id or kafka.client_id,
        "broker_credentials": faust_credentials(kafka),
    }


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of aiokafka and faust clients (CA, client cert and key); ``None`` without SSL.

    Without ``ssl_cafile`` the system CAs verify the broker, as librdkafka does.
    """
    if _protocol(kafka) not in ("SSL", "SASL_SSL"):
        return None
    from aiokafka.helpers import create_ssl_context

    return create_ssl_context(cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile)


def _protocol(kafka: KafkaSettings) -> str:
    protocol = kafka.security_protocol.upper()
    if protocol not in _PROTOCOLS:
        raise ValueError(f"unknown Kafka security_protocol {kafka.security_protocol!r}; expected one of {_PROTOCOLS}")
    return protocol


def _sasl_mechanism(kafka: KafkaSettings) -> str:
    # No silent default: librdkafka would pick GSSAPI, aiokafka PLAIN.
    mechanism = (kafka.sasl_mechanism or "").upper()
    if mechanism not in _SASL_MECHANISMS:
        raise ValueError(
            f"Kafka sasl_mechanism {kafka.sasl_mechanism!r} with {kafka.security_protocol}; "
            f"expected one of {_SASL_MECHANISMS}"
        )
    return mechanism


def _password(kafka: KafkaSettings) -> str | None:
    """The only place the SASL password is unwrapped: straight into a client configuration."""
    return kafka.sasl_password.get_secret_value() if kafka.sasl_password else None


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
        NewTopic(topics.shadow_tags, num_partitions=n, replication_factor=rf, config=compacted),
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
    """True when the broker answers a metadata request (quietly: a refused connection is the answer)."""
    try:
        md = AdminClient(client_config(kafka) | {"log_level": 0}).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return bool(md.brokers)
