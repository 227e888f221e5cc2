"""What the local broker (tansu 0.6) does of what tagloop relies on; the README table comes from here.

Each test exercises one Kafka feature on the real broker. Where the broker lacks a
feature, the test measures that and skips with what it saw; it never fakes it.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from shared.kafka import client_config, consumer_config, create_topics, producer_config
from shared.settings import KafkaSettings
from tests.support import transactions_problem

pytestmark = pytest.mark.integration


@pytest.fixture
def kafka(kafka_bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_bootstrap)


def new_topic(kafka: KafkaSettings, partitions: int = 1, config: dict[str, str] | None = None) -> str:
    name = f"cap-{uuid.uuid4().hex[:8]}"
    spec = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
    create_topics(kafka, [spec])
    return name


def produce(kafka: KafkaSettings, topic: str, n: int, partition: int | None = None, **extra: object) -> None:
    producer = Producer(producer_config(kafka))
    for i in range(n):
        kwargs = {"partition": partition} if partition is not None else {}
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), **kwargs, **extra)  # type: ignore[arg-type]
    assert producer.flush(30) == 0


def drain(consumer: Consumer, want: int, timeout_s: float = 30) -> list:
    out: list = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            out.append(msg)
    return out


def wait_assignment(consumers: list[Consumer], timeout_s: float = 30) -> list[set[int]]:
    """Poll all members until every one has partitions (a join takes ~half the session timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for c in consumers:
            c.poll(0.1)
        parts = [{tp.partition for tp in c.assignment()} for c in consumers]
        if all(parts) and sum(len(p) for p in parts) == len(set().union(*parts)):
            return parts
    return [{tp.partition for tp in c.assignment()} for c in consumers]


def test_consumer_group_and_rebalance(kafka: KafkaSettings) -> None:
    topic = new_topic(kafka, partitions=4)
    group = f"g-{uuid.uuid4().hex[:6]}"
    first = Consumer(consumer_config(kafka, group))
    first.subscribe([topic])
    assert wait_assignment([first]) == [{0, 1, 2, 3}]
    second = Consumer(consumer_config(kafka, group))
    second.subscribe([topic])
    try:
        a, b = wait_assignment([first, second], timeout_s=45)
        assert a and b, "second member got no partitions after rebalance"
        assert a.isdisjoint(b) and a | b == {0, 1, 2, 3}
    finally:
        first.close()
        second.close()


def test_committed_offsets_resume(kafka: KafkaSettings) -> None:
    topic = new_topic(kafka)
    produce(kafka, topic, 10, partition=0)
    group = f"g-{uuid.uuid4().hex[:6]}"
    c1 = Consumer(consumer_config(kafka, group))
    c1.subscribe([topic])
    got = drain(c1, 5)
    assert len(got) >= 5
    c1.commit(offsets=[TopicPartition(topic, 0, got[4].offset() + 1)], asynchronous=False)
    c1.close()
    c2 = Consumer(consumer_config(kafka, group))
    committed = c2.committed([TopicPartition(topic, 0)], timeout=10)
    assert committed[0].offset == 5
    c2.subscribe([topic])
    rest = drain(c2, 5)
    c2.close()
    assert [m.value() for m in rest] == [f"v{i}".encode() for i in range(5, 10)]


def test_idempotent_producer_exactly_in_order(kafka: KafkaSettings) -> None:
    topic = new_topic(kafka)
    produce(kafka, topic, 500, partition=0)
    consumer = Consumer(consumer_config(kafka, f"g-{uuid.uuid4().hex[:6]}"))
    consumer.subscribe([topic])
    got = drain(consumer, 500)
    time.sleep(1)
    got += drain(consumer, 1, timeout_s=1)
    consumer.close()
    assert [m.value() for m in got] == [f"v{i}".encode() for i in range(500)]


def test_transactions_read_committed(kafka: KafkaSettings) -> None:
    """Aborted records must stay invisible to a read_committed consumer, also one that is
    already reading while the transaction is open (the tagger's downstream case)."""
    problem = transactions_problem(kafka)
    if problem:
        pytest.skip(f"broker lacks correct transactions: {problem}")


def test_compacted_topic_config_and_tombstones(kafka: KafkaSettings) -> None:
    topic = new_topic(kafka, config={"cleanup.policy": "compact"})
    admin = AdminClient(client_config(kafka))
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    policy = configs.get("cleanup.policy")
    producer = Producer(producer_config(kafka))
    producer.produce(topic, key=b"l1", value=b"tags-v1", partition=0)
    producer.produce(topic, key=b"l1", value=None, partition=0)  # tombstone
    assert producer.flush(10) == 0
    consumer = Consumer(consumer_config(kafka, f"g-{uuid.uuid4().hex[:6]}"))
    consumer.subscribe([topic])
    got = drain(consumer, 2)
    consumer.close()
    assert [m.value() for m in got] == [b"tags-v1", None], "tombstones must be delivered as null values"
    if policy is None or policy.value != "compact":
        pytest.skip(f"broker accepts compacted topics and tombstones but reports cleanup.policy="
                    f"{policy.value if policy else None!r} (no compaction observable)")


def test_timestamps_and_offsets_for_times(kafka: KafkaSettings) -> None:
    topic = new_topic(kafka)
    producer = Producer(producer_config(kafka))
    base = int(time.time() * 1000) - 60_000
    for i in range(5):
        producer.produce(topic, value=f"t{i}".encode(), partition=0, timestamp=base + i * 1000)
        producer.flush(10)  # one batch each: offsets-for-times resolves to batch boundaries on some brokers
    consumer = Consumer(consumer_config(kafka, f"g-{uuid.uuid4().hex[:6]}"))
    found = consumer.offsets_for_times([TopicPartition(topic, 0, base + 2500)], timeout=10)
    consumer.assign([TopicPartition(topic, 0, 0)])
    got = drain(consumer, 5)
    consumer.close()
    assert [m.timestamp()[1] for m in got] == [base + i * 1000 for i in range(5)], "timestamps kept"
    if found[0].offset != 3:
        pytest.skip(f"broker keeps record timestamps but offsets_for_times(t+2.5s) returned "
                    f"{found[0].offset}, expected 3 (replay by time must scan timestamps)")


def test_watermarks(kafka: KafkaSettings) -> None:
    topic = new_topic(kafka)
    producer = Producer(producer_config(kafka))
    for batch in range(3):
        for i in range(4):
            producer.produce(topic, value=f"{batch}-{i}".encode(), partition=0)
        producer.flush(10)
    consumer = Consumer(consumer_config(kafka, f"g-{uuid.uuid4().hex[:6]}"))
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.close()
    assert low == 0
    if high != 12:
        pytest.skip(f"broker reports wrong high watermark: {high} for 12 records in 3 batches "
                    "(end offsets unusable for lag or 'caught up' checks)")
    assert high == 12


def test_topic_max_message_bytes_is_enforced(kafka: KafkaSettings) -> None:
    """A record over the topic's ``max.message.bytes`` must fail its delivery (MSG_SIZE_TOO_LARGE)."""
    topic = new_topic(kafka, config={"max.message.bytes": "2000"})
    producer = Producer(producer_config(kafka))
    results: list[object] = []
    producer.produce(topic, value=b"x" * 10_000, on_delivery=lambda err, _msg: results.append(err))
    assert producer.flush(30) == 0
    if results == [None]:
        pytest.skip("not enforced: a 10,000-byte record was accepted by a topic with max.message.bytes=2000")
    assert results and results[0] is not None


def test_producing_to_a_missing_topic_fails(kafka: KafkaSettings) -> None:
    """Apache Kafka with auto.create.topics.enable=false (production) refuses a topic that does not exist."""
    topic = f"cap-missing-{uuid.uuid4().hex[:8]}"
    producer = Producer(producer_config(kafka) | {"message.timeout.ms": 3000})
    results: list[object] = []
    producer.produce(topic, value=b"x", on_delivery=lambda err, _msg: results.append(err))
    producer.flush(10)
    if results == [None]:
        pytest.skip("topics are created on first produce (the record was delivered to a new topic)")
    assert results and results[0] is not None
