"""``tagloop bench feedback --json``: feedback events/s counted into Postgres, exactly once.

What is measured, in one run, on the same synthetic events:

* ``end_to_end``: the real worker (``python -m services.feedback.main``, faust) reads a
  pre-filled ``feedback`` topic from a private tansu broker and counts into a fresh
  database. Rate = events counted between the first and the last committed batch,
  divided by that time (worker start-up and group join excluded; both reported).
  "Counted" is read from the offsets the worker stores in the same transaction as
  its counts, so the rate is of exactly-once, committed work.
* ``stages`` (single process, no Kafka): pydantic decode of the raw bytes, the pure
  per-batch aggregation, and the Postgres unit of work alone (claim ids, COPY
  archive, counter upserts, offsets) - where the time goes per event.
* The worker's own split of its busy time (decode / Postgres / rest = faust and
  aiokafka: fetching, buffering, acking).

Finally the counts are checked against a recount from the archive.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from services.feedback.domain import Consumed, dedup, plan_feedback
from services.feedback.loadgen import (
    OffsetRecorder,
    start_worker,
    stored_offsets,
    synthetic_feedback,
    synthetic_tags,
    wait_caught_up,
)
from services.feedback.migrations import MIGRATIONS
from services.feedback.repository import PostgresFeedbackStore, recount_mismatches
from shared.db import apply_migrations, async_pool
from shared.devstack import broker, stack
from shared.events import FeedbackEvent, decode, encode
from shared.kafka import create_topics, topic_specs
from shared.settings import Settings, TopicSettings


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


def _stage_bench(
    url: str, raw: Sequence[bytes], tags: dict[str, tuple[str, ...]], batch_size: int
) -> dict[str, Any]:
    """Decode, aggregate and the Postgres unit of work, each timed alone on the same events."""
    t0 = time.perf_counter()
    events = [decode(FeedbackEvent, r) for r in raw]
    decode_s = time.perf_counter() - t0
    consumed = [Consumed(e, "bench", i % 4, i // 4) for i, e in enumerate(events)]
    batches = [consumed[i : i + batch_size] for i in range(0, len(consumed), batch_size)]

    t0 = time.perf_counter()
    for b in batches:
        plan_feedback(dedup(b), tags)
    aggregate_s = time.perf_counter() - t0

    async def pg() -> float:
        pool = async_pool(url, max_size=1)
        await pool.open()
        try:
            store = PostgresFeedbackStore(pool, "bench-stages")
            await store.record_tags([], "bench")  # warm the pool
            t = time.perf_counter()
            for b in batches:
                await store.record_feedback(b)
            return time.perf_counter() - t
        finally:
            await pool.close()

    uow_s = asyncio.run(pg())
    n = len(raw)
    return {
        "events": n,
        "decode_us_per_event": round(decode_s / n * 1e6, 2),
        "aggregate_us_per_event": round(aggregate_s / n * 1e6, 2),
        "postgres_uow_us_per_event": round(uow_s / n * 1e6, 2),
        "postgres_uow_events_per_s": _rate(n, uow_s),
        "postgres_uow_includes": "dedup + aggregate + claim ids + COPY archive + 4 counter upserts + offsets",
        "decode_plus_uow_events_per_s": _rate(n, decode_s + uow_s),
    }


def run(
    n_events: int = 100_000,
    batch_size: int = 10_000,
    stage_events: int = 50_000,
    n_users: int = 20_000,
    n_listings: int = 5_000,
    timeout_s: float = 300.0,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Run the benchmark on a private broker and a fresh database; returns the JSON report."""
    base = settings or Settings()
    run_id = uuid.uuid4().hex[:8]
    state_dir = Path(tempfile.mkdtemp(prefix="tagloop-bench-feedback-"))
    bootstrap = broker.start_broker(state_dir)
    db_name = f"tagloop_bench_feedback_{run_id}"
    url = stack.ensure_database(base.database_url, db_name)
    worker = None
    try:
        apply_migrations(url, MIGRATIONS)
        topics = TopicSettings(
            listings=f"listings-{run_id}",
            tags=f"listing-tags-{run_id}",
            feedback=f"feedback-{run_id}",
            dead_letter=f"dead-letter-{run_id}",
            user_affinity=f"user-affinity-{run_id}",
            partitions=base.topics.partitions,
        )
        settings = base.model_copy(
            update={
                "kafka": base.kafka.model_copy(update={"bootstrap_servers": bootstrap}),
                "database_url": url,
                "topics": topics,
                "state_dir": state_dir,
            }
        )
        create_topics(settings.kafka, topic_specs(topics))

        tag_events = synthetic_tags(run_id, n_listings)
        raw = [
            encode(e) for e in synthetic_feedback(run_id, n_events, n_users=n_users, n_listings=n_listings)
        ]
        keys = [orjson_user(r) for r in raw]
        stats_file = state_dir / "worker-stats.json"
        group = f"bench-feedback-{run_id}"
        t_start = time.monotonic()
        worker = start_worker(
            settings,
            group,
            "bench-feedback",
            "--batch-size",
            str(batch_size),
            "--stats-file",
            str(stats_file),
        )
        # Listings' tags first (steady state: feedback about known listings), then the feedback backlog.
        rec = OffsetRecorder(settings.kafka)
        for ev in tag_events:
            rec.send(topics.tags, ev.listing_id.encode(), encode(ev))
        if not wait_caught_up(url, group, rec.flush(120), timeout_s, worker=worker):
            raise RuntimeError("worker did not store the listings' tags in time")
        startup_s = time.monotonic() - t_start
        t0 = time.perf_counter()
        for k, r in zip(keys, raw, strict=True):
            rec.send(topics.feedback, k, r)
        targets = rec.flush(120)
        produce_s = time.perf_counter() - t0

        fb_targets = {k: v for k, v in targets.items() if k[0] == topics.feedback}
        t_first = done_at_first = None
        deadline = time.monotonic() + timeout_s
        finished = False
        while time.monotonic() < deadline:
            if not worker.running():
                raise RuntimeError(f"worker exited; see {worker.log_file}")
            stored = stored_offsets(url, group)
            counted = sum(stored.get(k, -1) + 1 for k in fb_targets)
            now = time.monotonic()
            if counted > 0 and t_first is None:
                t_first, done_at_first = now, counted
            if all(stored.get(k, -1) >= v for k, v in targets.items()):
                finished = True
                break
            time.sleep(0.05)
        t_done = time.monotonic()
        worker_stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
        worker.stop()
        worker = None
        if not finished or t_first is None or done_at_first is None:
            raise RuntimeError(f"worker did not catch up within {timeout_s}s")

        steady_n = n_events - done_at_first
        steady_s = t_done - t_first
        mismatches = recount_mismatches(url)
        tags = {e.listing_id: tuple(sorted({t.tag_id for t in e.tags})) for e in tag_events}
        # Same events under new ids: the worker has claimed the originals, these must count afresh.
        stage_raw = [
            encode(decode(FeedbackEvent, r).model_copy(update={"event_id": f"stage-{i}"}))
            for i, r in enumerate(raw[:stage_events])
        ]
        stages = _stage_bench(url, stage_raw, tags, batch_size)

        busy = worker_stats.get("busy_since_first_batch_s") or steady_s
        split = {
            "decode_s": round(worker_stats.get("decode_s", 0.0), 3),
            "postgres_s": round(worker_stats.get("postgres_s", 0.0), 3),
            "dead_letter_s": round(worker_stats.get("dead_letter_s", 0.0), 3),
        }
        split["faust_kafka_and_other_s"] = round(busy - sum(split.values()), 3)
        return {
            "benchmark": "feedback",
            "events_per_s": _rate(steady_n, steady_s),
            "events": n_events,
            "batch_size": batch_size,
            "exactly_once_verified": set(mismatches.values()) == {0},
            "recount_mismatches": mismatches,
            "end_to_end": {
                "counted_events_measured": steady_n,
                "seconds": round(steady_s, 3),
                "worker_startup_join_and_tags_s": round(startup_s, 3),
                "worker_busy_split": split,
                "worker_batches": worker_stats.get("batches"),
                "postgres_retries": worker_stats.get("store_retries"),
            },
            "stages": stages,
            "produce_s": round(produce_s, 3),
            "partitions": topics.partitions,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }
    finally:
        if worker is not None:
            worker.stop()
        broker.stop_broker(state_dir)
        stack.drop_database(base.database_url, db_name)


def orjson_user(raw: bytes) -> bytes:
    """The record key (user_id) of an encoded feedback event."""
    return str(orjson.loads(raw)["user_id"]).encode()
