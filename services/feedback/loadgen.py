"""Synthetic feedback and tags on the real broker, and "caught up" checks: for tests and the benchmark.

The broker's high watermarks cannot be trusted (see ``shared/devstack/broker.py``),
so producers here record the offset of every delivered record and
:func:`wait_caught_up` compares those with what the worker stored in
``feedback_offsets`` in the same transaction as its counts.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from confluent_kafka import Producer

from shared.devstack.process import ManagedProcess
from shared.events import FeedbackEvent, FeedbackType, Tag, TagEvent, TagKind, TagSource, encode
from shared.kafka import producer_config
from shared.settings import KafkaSettings, Settings

Offsets = dict[tuple[str, int], int]
_TYPES = [
    (FeedbackType.IMPRESSION, 70),
    (FeedbackType.CLICK, 15),
    (FeedbackType.ADD_TO_CART, 6),
    (FeedbackType.PURCHASE, 3),
    (FeedbackType.TAG_ACCEPT, 3),
    (FeedbackType.TAG_REJECT, 3),
]
_TYPE_DRAW = [t for t, w in _TYPES for _ in range(w)]  # rng.choice over this draws by share


def tag_event(listing_id: str, tag_ids: Iterable[str], version: str = "v1") -> TagEvent:
    tags = [Tag(tag_id=t, name=t, kind=TagKind.CATEGORY, score=0.9, source=TagSource.MODEL) for t in tag_ids]
    return TagEvent(listing_id=listing_id, tags=tags, model_name="bench", model_version=version, source_event_id="s")


def synthetic_tags(prefix: str, n_listings: int, tags_per_listing: int = 3, n_tags: int = 200) -> list[TagEvent]:
    rng = random.Random(f"{prefix}-tags")
    return [
        tag_event(f"{prefix}-l{i}", {f"t{rng.randrange(n_tags)}" for _ in range(tags_per_listing)})
        for i in range(n_listings)
    ]


def synthetic_feedback(
    prefix: str,
    n: int,
    *,
    n_users: int = 1000,
    n_listings: int = 1000,
    start: datetime | None = None,
    seed: int = 0,
) -> Iterator[FeedbackEvent]:
    """``n`` events over a few hours; ids ``{prefix}-e{i}`` so reruns produce the same events."""
    rng = random.Random(seed)
    for i in range(n):
        yield synthetic_event(prefix, i, n, f"{prefix}-u{rng.randrange(n_users)}",
                              f"{prefix}-l{rng.randrange(n_listings)}", rng, start)


def synthetic_event(
    prefix: str, i: int, n: int, user_id: str, listing_id: str, rng: random.Random, start: datetime | None = None,
) -> FeedbackEvent:
    """Event ``i`` of ``n`` spread over two hours: a type drawn by its share of real traffic."""
    type_ = rng.choice(_TYPE_DRAW)
    return FeedbackEvent(
        event_id=f"{prefix}-e{i}",
        user_id=user_id,
        listing_id=listing_id,
        type=type_,
        tag_id=f"t{rng.randrange(200)}" if type_ in (FeedbackType.TAG_ACCEPT, FeedbackType.TAG_REJECT) else None,
        quantity=rng.randint(1, 3),
        price=round(rng.uniform(1, 200), 2) if type_ == FeedbackType.PURCHASE else None,
        ts=(start or datetime(2026, 3, 1, tzinfo=UTC)) + timedelta(seconds=i * 7200 / max(n, 1)),
    )


class OffsetRecorder:
    """A producer that remembers the offset of every delivered record per (topic, partition)."""

    def __init__(self, kafka: KafkaSettings, **overrides: object) -> None:
        conf = producer_config(kafka) | {"linger.ms": 20, "batch.num.messages": 10000} | overrides
        self.producer = Producer(conf)
        self.last: Offsets = {}
        self.errors: list[str] = []

    def _on_delivery(self, err: object, msg: object) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        key = (msg.topic(), msg.partition())  # type: ignore[attr-defined]
        self.last[key] = max(self.last.get(key, -1), msg.offset())  # type: ignore[attr-defined]

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, on_delivery=self._on_delivery)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> Offsets:
        if self.producer.flush(timeout_s) or self.errors:
            raise RuntimeError(f"produce failed: {self.errors[:3]}")
        return dict(self.last)


def produce_tags(rec: OffsetRecorder, topic: str, events: Iterable[TagEvent]) -> None:
    for ev in events:
        rec.send(topic, ev.listing_id.encode(), encode(ev))


def produce_feedback(rec: OffsetRecorder, topic: str, events: Iterable[FeedbackEvent]) -> None:
    for ev in events:
        rec.send(topic, ev.user_id.encode(), encode(ev))


def stored_offsets(url: str, group: str) -> Offsets:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            rows = conn.execute(
                'SELECT topic, partition, "offset" FROM feedback_offsets WHERE consumer_group = %s', (group,)
            ).fetchall()
    except psycopg.Error:
        return {}  # not migrated yet, or Postgres restarting
    return {(t, p): o for t, p, o in rows}


def caught_up(stored: Mapping[tuple[str, int], int], targets: Mapping[tuple[str, int], int]) -> bool:
    return all(stored.get(k, -1) >= v for k, v in targets.items())


def rollup_backlog(url: str) -> int:
    """Batches archived but not rolled up into the counters yet (0 without the rollup queue, or on error)."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT queued_batches FROM feedback_counter_freshness").fetchone()
    except psycopg.Error:
        return 0
    return int(row[0]) if row else 0


def wait_caught_up(
    url: str,
    group: str,
    targets: Mapping[tuple[str, int], int],
    timeout_s: float,
    poll_s: float = 0.2,
    worker: ManagedProcess | None = None,
) -> bool:
    """True once the worker stored offsets at or past every target and rolled every archived batch up
    into the counters (its counts include them).

    Raises
    ------
    RuntimeError
        When ``worker`` exited meanwhile (with the tail of its log).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker is not None and not worker.running():
            tail = worker.log_file.read_text(errors="replace")[-3000:] if worker.log_file.exists() else ""
            raise RuntimeError(f"worker {worker.name} exited:\n{tail}")
        if caught_up(stored_offsets(url, group), targets) and not rollup_backlog(url):
            return True
        time.sleep(poll_s)
    return False


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment that makes ``Settings()`` in a child process equal ``settings`` (what the worker reads)."""
    t = settings.topics
    return os.environ | {
        "TAGLOOP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "TAGLOOP_DATABASE_URL": settings.database_url,
        "TAGLOOP_STATE_DIR": str(settings.state_dir),
        "TAGLOOP_TOPICS__FEEDBACK": t.feedback,
        "TAGLOOP_TOPICS__TAGS": t.tags,
        "TAGLOOP_TOPICS__DEAD_LETTER": t.dead_letter,
        "TAGLOOP_TOPICS__PARTITIONS": str(t.partitions),
    }


def engine_args(spec: str) -> list[str]:
    """Worker arguments for ``faust``, ``batch`` or ``batch:N`` (batch engine, N concurrent writers),
    each optionally ``+inline`` or ``+rollup`` (how counters are written)."""
    spec, _, counters = spec.partition("+")
    kind, _, writers = spec.partition(":")
    args = ["--engine", kind, *(["--writers", writers] if writers else [])]
    return args + (["--counters", counters] if counters else [])


def start_worker(settings: Settings, group: str, name: str, *extra: str, repo: Path | None = None) -> ManagedProcess:
    """``python -m services.feedback.main`` as a child process (killable with -9).

    ``repo``: run the worker of another checkout (the benchmark's baseline), default this one.
    """
    proc = ManagedProcess(name, Path(settings.state_dir))
    repo = repo or Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-m", "services.feedback.main", "--group", group, *extra]
    proc.start(argv, env=worker_env(settings), cwd=repo)
    return proc
