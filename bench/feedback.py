"""``tagloop bench feedback --json``: feedback events/s counted into Postgres, exactly once.

Measured in one run, on the same synthetic events:

* ``end_to_end.<engine>``: the real worker (``python -m services.feedback.main --engine
  faust|batch``) on a private tansu broker and a fresh database: listings' tags first,
  then a backlog of feedback. Rate = events counted between the first and the last
  committed batch / that time (start-up, group join and tags excluded, reported).
  "Counted" is read from the offsets the worker stores in the same transaction as its
  counts, so it is committed, exactly-once work; each run ends with a recount from the
  archive (``exactly_once_verified``).
* ``cpu_us_per_event``: CPU of the worker process and of its Postgres backends during
  the feedback phase (from ``/proc``), which, unlike wall time, does not depend on what
  else runs on the machine; ``idle_cores_estimate_events_per_s`` follows from it.
* ``worker_busy_split``: the worker's own split of its busy time (decode / Postgres /
  the rest = Kafka client, faust stream machinery, acks).
* ``stages`` (one process, no Kafka): pydantic decode, dedup + attribution, what
  counting in Python would cost, and the Postgres unit of work alone.
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

import psycopg

from services.feedback.app import APPLICATION_NAME
from services.feedback.domain import Consumed, TagUpdate, count_rows, dedup, plan_feedback
from services.feedback.loadgen import (
    OffsetRecorder,
    engine_args,
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
from shared.settings import Settings


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
    plans = [plan_feedback(dedup(b), tags) for b in batches]
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    counted = [count_rows(p.archive) for p in plans]
    python_count_s = time.perf_counter() - t0
    # Counter rows the upserts write per batch (keys repeated within a batch collapse into one row).
    n_rows = sum(len(d.listing) + len(d.listing_hourly) + len(d.user) for d in counted)

    async def pg() -> tuple[float, float, float]:
        pool = async_pool(url, min_size=1, max_size=1)
        await pool.open()
        try:
            store = PostgresFeedbackStore(pool, "bench-stages")
            # The listings' tags, as the worker has them: each event counts against ~3 tags.
            updates = [TagUpdate(lid, t, False, "bench", 0, i) for i, (lid, t) in enumerate(sorted(tags.items()))]
            await store.record_tags(updates, "bench-tags")
            async with pool.connection() as conn:
                row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
            backend = row[0] if row else 0
            t, py, be = time.perf_counter(), time.process_time(), _cpu_s(backend)
            for b in batches:
                await store.record_feedback(b)
            return time.perf_counter() - t, time.process_time() - py, _cpu_s(backend) - be
        finally:
            await pool.close()

    uow_s, uow_py_cpu, uow_pg_cpu = asyncio.run(pg())
    rows_per_event = n_rows / len(raw)
    n = len(raw)
    return {
        "events": n,
        "decode_us_per_event": round(decode_s / n * 1e6, 2),
        "dedup_and_attribution_us_per_event": round(plan_s / n * 1e6, 2),
        "python_counting_us_per_event_not_used_by_postgres_path": round(python_count_s / n * 1e6, 2),
        "postgres_uow_us_per_event": round(uow_s / n * 1e6, 2),
        "postgres_uow_cpu_us_per_event": {
            "python": round(uow_py_cpu / n * 1e6, 2),
            "postgres_backend": round(uow_pg_cpu / n * 1e6, 2),
        },
        "postgres_uow_events_per_s": _rate(n, uow_s),
        "counter_rows_per_event": round(rows_per_event, 2),
        "postgres_uow_includes": "dedup, attribution, claim ids, COPY to staging, archive insert,"
        " 3 counting upserts (SQL aggregation), offsets",
        "decode_plus_uow_events_per_s": _rate(n, decode_s + uow_s),
    }


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User+system CPU seconds of a local process (0 if it is gone or not readable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _backend_pids(url: str) -> list[int]:
    """Postgres backends serving the worker (its sessions, by application name)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            (APPLICATION_NAME,),
        ).fetchall()
    return [r[0] for r in rows]


def _cpu_snapshot(worker_pid: int | None, url: str) -> dict[int, float]:
    pids = [*([worker_pid] if worker_pid else []), *_backend_pids(url)]
    return {pid: _cpu_s(pid) for pid in pids}


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
    """One engine on its own topics and database: tags first, then the feedback backlog.

    ``engine`` is ``faust``, ``batch`` or ``batch:N`` (the batch engine with N concurrent writers).
    """
    run_id = f"{engine.replace(':', '')}-{uuid.uuid4().hex[:6]}"
    db_name = f"tagloop_bench_feedback_{run_id.replace('-', '_')}"
    url = stack.ensure_database(base.database_url, db_name)
    worker = None
    try:
        apply_migrations(url, MIGRATIONS)
        topics = base.topics.suffixed(run_id)
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
            *engine_args(engine),
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
        cpu_before = _cpu_snapshot(worker.pid(), url)
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
        cpu_after = _cpu_snapshot(worker.pid(), url)
        worker_pid = worker.pid()
        worker_cpu = cpu_after.get(worker_pid or -1, 0.0) - cpu_before.get(worker_pid or -1, 0.0)
        pg_cpu = sum(v - cpu_before.get(pid, 0.0) for pid, v in cpu_after.items() if pid != worker_pid)
        worker_stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
        worker.stop()
        worker = None
        if not finished or t_first is None or done_at_first is None:
            raise RuntimeError(f"{engine} worker did not catch up within {timeout_s}s")
        mismatches = recount_mismatches(url)
        steady_n = len(keyed) - done_at_first
        steady_s = t_done - t_first
        busy = worker_stats.get("busy_since_first_batch_s") or steady_s
        split: dict[str, Any] = {
            "decode_s": round(worker_stats.get("decode_s", 0.0), 3),
            "postgres_s": round(worker_stats.get("postgres_s", 0.0), 3),
            "dead_letter_s": round(worker_stats.get("dead_letter_s", 0.0), 3),
        }
        split["kafka_client_and_other_s"] = round(busy - sum(split.values()), 3)
        if ":" in engine:
            split["note"] = "concurrent writers: postgres_s sums their times, so 'other' can be negative"
        n_fb = len(keyed)
        worker_us, pg_us = worker_cpu / n_fb * 1e6, pg_cpu / n_fb * 1e6
        return {
            "events_per_s": _rate(steady_n, steady_s),
            # Load-independent: CPU per event of the worker process and of its Postgres backends during
            # the feedback phase. The worker waits for each transaction, so on idle cores the rate is
            # about 1 / (worker + postgres) per event.
            "cpu_us_per_event": {"worker": round(worker_us, 1), "postgres_backends": round(pg_us, 1)},
            "idle_cores_estimate_events_per_s": _rate(1, (worker_us + pg_us) / 1e6),
            # The batch engine decodes the next poll while Postgres writes the last: with a core each,
            # the slower of the two bounds it.
            "idle_cores_overlapped_bound_events_per_s": _rate(1, max(worker_us, pg_us) / 1e6),
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
    n_events: int = 60_000,
    batch_size: int = 10_000,
    stage_events: int = 50_000,
    n_users: int = 20_000,
    n_listings: int = 5_000,
    engines: Sequence[str] = ("batch", "batch:2", "faust"),
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


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, sort_keys=True))
