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
from shared.events import FeedbackEvent, TagEvent, decode, encode
from shared.kafka import create_topics, topic_specs
from shared.settings import Settings, TopicSettings


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


def _stage_bench(url: str, raw: Sequence[bytes], tags: dict[str, tuple[str, ...]], batch_size: int) -> dict[str, Any]:
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


def _end_to_end(
    base: Settings,
    bootstrap: str,
    state_dir: Path,
    engine: str,
    tag_events: Sequence[TagEvent],
    keyed: Sequence[tuple[bytes, bytes]],
    batch_size: int,
    timeout_s: float,
) -> dict[str, Any]:
    """One engine on its own topics and database: tags first, then the feedback backlog."""
    run_id = f"{engine}-{uuid.uuid4().hex[:6]}"
    db_name = f"tagloop_bench_feedback_{run_id.replace('-', '_')}"
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
        stats_file = state_dir / f"worker-stats-{run_id}.json"
        group = f"bench-feedback-{run_id}"
        t_start = time.monotonic()
        worker = start_worker(
            settings,
            group,
            f"bench-feedback-{run_id}",
            "--engine",
            engine,
            "--batch-size",
            str(batch_size),
            "--stats-file",
            str(stats_file),
            "--loglevel",
            "warning",
        )
        # Listings' tags first (steady state: feedback about known listings), then the feedback backlog.
        rec = OffsetRecorder(settings.kafka)
        for ev in tag_events:
            rec.send(topics.tags, ev.listing_id.encode(), encode(ev))
        if not wait_caught_up(url, group, rec.flush(120), timeout_s, worker=worker):
            raise RuntimeError("worker did not store the listings' tags in time")
        startup_s = time.monotonic() - t_start
        t0 = time.perf_counter()
        for key, value in keyed:
            rec.send(topics.feedback, key, value)
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
            raise RuntimeError(f"{engine} worker did not catch up within {timeout_s}s")
        mismatches = recount_mismatches(url)
        steady_n = len(keyed) - done_at_first
        steady_s = t_done - t_first
        busy = worker_stats.get("busy_since_first_batch_s") or steady_s
        split = {
            "decode_s": round(worker_stats.get("decode_s", 0.0), 3),
            "postgres_s": round(worker_stats.get("postgres_s", 0.0), 3),
            "dead_letter_s": round(worker_stats.get("dead_letter_s", 0.0), 3),
        }
        split["kafka_client_and_other_s"] = round(busy - sum(split.values()), 3)
        return {
            "events_per_s": _rate(steady_n, steady_s),
            "counted_events_measured": steady_n,
            "seconds": round(steady_s, 3),
            "exactly_once_verified": set(mismatches.values()) == {0},
            "recount_mismatches": mismatches,
            "worker_startup_join_and_tags_s": round(startup_s, 3),
            "produce_s": round(produce_s, 3),
            "worker_busy_split": split,
            "worker_batches": worker_stats.get("batches"),
            "postgres_retries": worker_stats.get("store_retries"),
        }
    finally:
        if worker is not None:
            worker.stop()
        stack.drop_database(base.database_url, db_name)


def run(
    n_events: int = 100_000,
    batch_size: int = 10_000,
    stage_events: int = 50_000,
    n_users: int = 20_000,
    n_listings: int = 5_000,
    engines: Sequence[str] = ("batch", "faust"),
    timeout_s: float = 300.0,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Run the benchmark on a private broker and fresh databases; returns the JSON report.

    ``events_per_s`` is the best engine's end-to-end rate; every engine's is reported.
    """
    base = settings or Settings()
    run_id = uuid.uuid4().hex[:8]
    state_dir = Path(tempfile.mkdtemp(prefix="tagloop-bench-feedback-"))
    bootstrap = broker.start_broker(state_dir)
    try:
        tag_events = synthetic_tags(run_id, n_listings)
        events = list(synthetic_feedback(run_id, n_events, n_users=n_users, n_listings=n_listings))
        keyed = [(e.user_id.encode(), encode(e)) for e in events]
        e2e = {
            engine: _end_to_end(base, bootstrap, state_dir, engine, tag_events, keyed, batch_size, timeout_s)
            for engine in engines
        }
        tags = {e.listing_id: tuple(sorted({t.tag_id for t in e.tags})) for e in tag_events}
        stage_db = f"tagloop_bench_feedback_stages_{run_id}"
        url = stack.ensure_database(base.database_url, stage_db)
        try:
            apply_migrations(url, MIGRATIONS)
            stages = _stage_bench(url, [v for _, v in keyed[:stage_events]], tags, batch_size)
        finally:
            stack.drop_database(base.database_url, stage_db)
        best = max(e2e, key=lambda k: e2e[k]["events_per_s"])
        return {
            "benchmark": "feedback",
            "events_per_s": e2e[best]["events_per_s"],
            "best_engine": best,
            "exactly_once_verified": all(r["exactly_once_verified"] for r in e2e.values()),
            "events": n_events,
            "batch_size": batch_size,
            "end_to_end": e2e,
            "stages": stages,
            "partitions": base.topics.partitions,
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }
    finally:
        broker.stop_broker(state_dir)
