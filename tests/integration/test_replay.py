"""Replay by offset and by time on the real broker (whose offsets-for-times is coarse)."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from services.replay.core import ReplayRange, replay_to_file, replay_to_topic
from shared.kafka import producer_config
from shared.settings import Settings
from tests.support import read_topic

pytestmark = pytest.mark.integration


def fill(settings: Settings, base_ms: int) -> list[tuple[bytes, bytes | None, int]]:
    """20 records over 4 partitions, one second apart, one tombstone; returns (key, value, ts)."""
    producer = Producer(producer_config(settings.kafka))
    sent = []
    for i in range(20):
        key, value, ts = f"k{i}".encode(), (None if i == 7 else f"v{i}".encode()), base_ms + i * 1000
        producer.produce(settings.topics.listings, key=key, value=value, timestamp=ts, partition=i % 4)
        producer.flush(10)
        sent.append((key, value, ts))
    return sent


def test_replay_by_time_is_exact_even_with_coarse_offsets_for_times(settings: Settings) -> None:
    base = int(time.time() * 1000) - 100_000
    sent = fill(settings, base)
    rng = ReplayRange(from_time=datetime.fromtimestamp((base + 5_500) / 1000, UTC),
                      to_time=datetime.fromtimestamp((base + 15_500) / 1000, UTC), idle_s=3)
    n = replay_to_topic(settings.kafka, settings.topics.listings, settings.topics.feedback, rng)
    want = {(k, v, ts) for k, v, ts in sent if base + 5_500 <= ts < base + 15_500}
    got = read_topic(settings.kafka, settings.topics.feedback, expect=len(want))
    assert n == len(want) == 10
    assert {(m.key(), m.value(), m.timestamp()[1]) for m in got} == want  # tombstone at i=7 included


def test_replay_by_offset_to_file(settings: Settings, tmp_path: Path) -> None:
    sent = fill(settings, int(time.time() * 1000) - 50_000)
    out = tmp_path / "replay.jsonl"
    n = replay_to_file(settings.kafka, settings.topics.listings, out, ReplayRange(from_offset=2, idle_s=3))
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    # 5 records per partition; offsets 2..4 of each.
    assert n == len(rows) == 12
    assert all(r["offset"] >= 2 for r in rows)
    values = {r["key"]: (base64.b64decode(r["value_b64"]) if r["value_b64"] else None) for r in rows}
    assert values == {k.decode(): v for i, (k, v, _) in enumerate(sent) if i // 4 >= 2}


def test_replay_is_rate_limited_summarised_and_joins_no_group(settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    from services.replay.core import ReplaySummary
    from shared.kafka import client_config

    sent = fill(settings, int(time.time() * 1000) - 30_000)
    admin = AdminClient(client_config(settings.kafka))
    groups_before = {g.group_id for g in admin.list_consumer_groups().result().valid}
    summary = ReplaySummary()
    n = replay_to_topic(settings.kafka, settings.topics.listings, settings.topics.feedback,
                        ReplayRange(from_offset=0, idle_s=2), rate_per_s=8.0, summary=summary)
    assert n == summary.records == 20 and summary.tombstones == 1
    assert summary.per_partition == {0: 5, 1: 5, 2: 5, 3: 5}
    assert summary.seconds >= 19 / 8.0  # 20 records at 8/s: the last is due after 2.4 s
    assert summary.first_ts_ms == sent[0][2] and summary.last_ts_ms == sent[-1][2]
    groups_after = {g.group_id for g in admin.list_consumer_groups().result().valid}
    assert not {g for g in groups_after - groups_before if g.startswith("tagloop-replay")}
    with pytest.raises(ValueError):
        replay_to_topic(settings.kafka, settings.topics.listings, settings.topics.listings, ReplayRange())
