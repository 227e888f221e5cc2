"""``tagloop bench feedback --json``: feedback events/s into Postgres, exactly once, old and new path.

Measured in one run, on the same events, engine after engine for each load shape
(``bench/feedback_loads.py``: ``uniform`` synthetic, ``skewed`` like Online Retail's shoppers,
``replay`` of real Online Retail purchases):

* ``runs.<load>.<engine>``: the real worker (``python -m services.feedback.main``) on a private
  tansu broker and a fresh database: listings' tags first, then a backlog of feedback.
  ``events_per_s`` = events archived between the first and the last committed batch / that time,
  read from the offsets stored in the same transaction as the rows (committed exactly-once work);
  ``counted_events_per_s`` also waits for the counters (rollup queue empty).
  Engines: ``batch`` / ``faust`` (new write path, counters in the batch's transaction), ``+rollup``
  (new path, counters rolled up from the archive), ``old-batch`` / ``old-faust`` (the worker of the
  ``--baseline`` revision, run from a ``git archive`` copy). Each run ends with the recount audit
  of the code that wrote it (``recount_mismatches``: must be 0).
* CPU per event of the worker process and of its Postgres backends (``/proc``) during the feedback
  phase: unlike wall time, it depends little on what else runs on the machine.
* ``counter_freshness_p99_s``: p99 over rolled-up batches of the time from a batch's commit to the
  rollup step that counted it (0 for counters written in the batch's transaction).
* ``distinct_keys_per_event``: counter rows per event after pre-combining a micro-batch, or a rollup step.
* ``broker_ceiling`` (uniform load): the same backlog fetched by the batch engine's consumer with
  nothing behind it, then fetched and decoded: the most any write path gets through this broker
  and client here, with the consumer's and the broker's CPU per event.
* ``stages`` (one process, no Kafka): pydantic vs the msgspec fast decoder on the same records, and the
  new unit of work alone (inline counters; archive only, then the rollup).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench.feedback_loads import LOADS, load
from services.feedback.app import APPLICATION_NAME
from services.feedback.domain import Consumed, TagUpdate, count_rows, plan_feedback
from services.feedback.loadgen import (
    OffsetRecorder,
    caught_up,
    engine_args,
    rollup_backlog,
    start_worker,
    stored_offsets,
    wait_caught_up,
)
from services.feedback.migrations import MIGRATIONS
from services.feedback.repository import CounterMode, PostgresFeedbackStore, recount_mismatches
from services.feedback.rollup import Rollup
from shared.db import apply_migrations, async_pool
from shared.devstack import broker, stack
from shared.events import FeedbackEvent, TagEvent, decode_record, encode
from shared.fast_decode import FeedbackRow, decode_feedback
from shared.kafka import create_topics, topic_specs
from shared.settings import Settings


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


def _p99(xs: Sequence[float]) -> float | None:
    if not xs:
        return None
    ordered = sorted(xs)
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3)


def distinct_keys_per_event(
    events: Sequence[FeedbackEvent], tags: dict[str, tuple[str, ...]], chunk: int
) -> float:
    """Counter rows written per event when ``chunk`` consecutive events are pre-combined (a micro-batch, or a
    rollup step): distinct user×tag + listing×tag + listing×tag×hour keys, over events."""
    rows = 0
    for i in range(0, len(events), chunk):
        part = [Consumed(e, "bench", 0, j) for j, e in enumerate(events[i : i + chunk])]
        d = count_rows(plan_feedback(part, tags).archive)
        rows += len(d.user) + len(d.listing) + len(d.listing_hourly)
    return round(rows / max(1, len(events)), 3)


def _stage_bench(
    url: str, raw: Sequence[tuple[bytes, bytes]], tags: dict[str, tuple[str, ...]], batch_size: int
) -> dict[str, Any]:
    """The decoders side by side, and the new unit of work (inline counters / rollup), each timed alone."""
    n = len(raw)
    t0 = time.perf_counter()
    slow = [decode_record(FeedbackEvent, k, v) for k, v in raw]
    pydantic_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = [decode_feedback(k, v) for k, v in raw]
    fast_s = time.perf_counter() - t0
    assert [FeedbackRow.of(e) for e in slow] == rows, "fast decoder disagrees with pydantic"
    consumed = [Consumed(e, "bench", i % 4, i // 4) for i, e in enumerate(rows)]
    batches = [consumed[i : i + batch_size] for i in range(0, n, batch_size)]

    async def pg(counters: CounterMode) -> dict[str, float]:
        pool = async_pool(url, min_size=1, max_size=1)
        await pool.open()
        try:
            store = PostgresFeedbackStore(pool, f"bench-stages-{counters}", counters=counters)
            updates = [TagUpdate(lid, t, False, "bench", 0, i) for i, (lid, t) in enumerate(sorted(tags.items()))]
            await store.record_tags(updates, "bench-tags")
            async with pool.connection() as conn:
                await conn.execute(
                    "TRUNCATE feedback_events, feedback_rollup_queue, feedback_user_tag_counts,"
                    " feedback_listing_tag_counts, feedback_listing_tag_hourly"
                )
                row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
            backend = row[0] if row else 0
            t, py, be = time.perf_counter(), time.process_time(), _cpu_s(backend)
            for b in batches:
                await store.record_feedback(b)
            out = {
                "uow_us_per_event": (time.perf_counter() - t) / n * 1e6,
                "uow_python_cpu_us_per_event": (time.process_time() - py) / n * 1e6,
                "uow_postgres_cpu_us_per_event": (_cpu_s(backend) - be) / n * 1e6,
            }
            if counters == "rollup":
                t, be = time.perf_counter(), _cpu_s(backend)
                await Rollup(pool).drain()
                out["rollup_us_per_event"] = (time.perf_counter() - t) / n * 1e6
                out["rollup_postgres_cpu_us_per_event"] = (_cpu_s(backend) - be) / n * 1e6
            return {k: round(v, 2) for k, v in out.items()}
        finally:
            await pool.close()

    return {
        "events": n,
        "decode_us_per_event": {
            "pydantic": round(pydantic_s / n * 1e6, 2),
            "msgspec_fast_path": round(fast_s / n * 1e6, 2),
        },
        "inline": asyncio.run(pg("inline")),
        "rollup": asyncio.run(pg("rollup")),
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


def _recount(url: str, repo: Path | None) -> dict[str, int]:
    """The audit of the code that wrote the database (a baseline checkout audits its own schema)."""
    if repo is None:
        return recount_mismatches(url)
    code = (
        "import json, sys; from services.feedback.repository import recount_mismatches as r;"
        " print(json.dumps(r(sys.argv[1])))"
    )
    out = subprocess.run([sys.executable, "-c", code, url], cwd=repo, capture_output=True, text=True, check=True)
    return {k: int(v) for k, v in json.loads(out.stdout).items()}


def _end_to_end(
    base: Settings,
    bootstrap: str,
    state_dir: Path,
    engine: str,
    tag_events: Sequence[TagEvent],
    keyed: Sequence[tuple[bytes, bytes]],
    batch_size: int,
    timeout_s: float,
    baseline: Path | None,
) -> dict[str, Any]:
    """One engine on its own topics and database: tags first, then the feedback backlog.

    ``engine``: ``faust``, ``batch`` or ``batch:N`` (N concurrent writers), optionally ``+inline`` (counters in
    each batch's transaction); ``old-<engine>`` runs the worker of the ``baseline`` checkout instead.
    """
    old = engine.startswith("old-")
    repo = baseline if old else None
    spec = engine.removeprefix("old-")
    run_id = f"{engine.replace(':', '').replace('+', '')}-{uuid.uuid4().hex[:6]}"
    db_name = f"tagloop_bench_feedback_{run_id.replace('-', '_')}"
    url = stack.ensure_database(base.database_url, db_name)
    worker = None
    try:
        if old:
            subprocess.run(
                [sys.executable, "-c", "import sys; from services.feedback.migrations import MIGRATIONS as M;"
                 " from shared.db import apply_migrations as a; a(sys.argv[1], M)", url],
                cwd=repo, check=True, capture_output=True,
            )  # fmt: skip
        else:
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
            settings, group, f"bench-feedback-{run_id}", *engine_args(spec), "--batch-size", str(batch_size),
            "--stats-file", str(stats_file), "--loglevel", "warning", repo=repo,
        )  # fmt: skip
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
        t_first = done_at_first = t_archived = None
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
            if t_archived is None and caught_up(stored, targets):
                t_archived = now
            if t_archived is not None and not rollup_backlog(url):
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
        if not finished or t_first is None or done_at_first is None or t_archived is None:
            raise RuntimeError(f"{engine} worker did not catch up within {timeout_s}s")
        mismatches = _recount(url, repo)
        steady_n = len(keyed) - done_at_first
        busy = worker_stats.get("busy_since_first_batch_s") or (t_done - t_first)
        split: dict[str, Any] = {
            key: round(worker_stats.get(key, 0.0), 3) for key in ("decode_s", "postgres_s", "dead_letter_s")
        }
        split["kafka_client_and_other_s"] = round(busy - sum(split.values()), 3)
        split["rollup_s_concurrent"] = round(worker_stats.get("rollup_s", 0.0), 3)
        n_fb = len(keyed)
        worker_us, pg_us = worker_cpu / n_fb * 1e6, pg_cpu / n_fb * 1e6
        lags = worker_stats.get("counter_lags_s") or []
        rolled_up = "+rollup" in spec
        return {
            # Archived exactly once (offsets stored with the rows), first to last committed batch.
            "events_per_s": _rate(steady_n, t_archived - t_first),
            # ... and in the counters too (rollup mode: until the rollup queue is empty).
            "counted_events_per_s": _rate(steady_n, t_done - t_first),
            "postgres_cpu_us_per_event": round(pg_us, 1),
            "worker_cpu_us_per_event": round(worker_us, 1),
            "idle_cores_estimate_events_per_s": _rate(1, (worker_us + pg_us) / 1e6),
            "counter_freshness_p99_s": _p99(lags) if rolled_up else 0.0,
            "counter_freshness_max_s": round(max(lags), 3) if rolled_up and lags else None,
            "rolled_up_batches": len(lags),
            "recount_mismatches": sum(mismatches.values()),
            "recount_mismatches_by_table": mismatches,
            "counted_events_measured": steady_n,
            "seconds": round(t_done - t_first, 3),
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


def broker_ceiling(
    base: Settings, bootstrap: str, state_dir: Path, keyed: Sequence[tuple[bytes, bytes]], batch_size: int
) -> dict[str, Any]:
    """What the broker and the worker's Kafka client alone sustain on this machine: the same backlog
    fetched by the batch engine's consumer with nothing behind it (``fetch``), then also decoded by
    the hot path's decoder (``fetch+decode``). No write path behind this broker and client can go
    faster; CPU per event of this process (the consumer) and of the broker show where it goes."""
    from aiokafka import TopicPartition

    from services.feedback.app import FeedbackConfig
    from services.feedback.batch import build_consumer
    from shared.devstack.process import ManagedProcess

    run_id = f"ceiling-{uuid.uuid4().hex[:6]}"
    topics = base.topics.suffixed(run_id)
    settings = base.model_copy(update={"kafka": base.kafka.model_copy(update={"bootstrap_servers": bootstrap}),
                                       "topics": topics})
    create_topics(settings.kafka, topic_specs(topics))
    rec = OffsetRecorder(settings.kafka)
    for key, value in keyed:
        rec.send(topics.feedback, key, value)
    rec.flush(120)
    broker_pid = ManagedProcess(broker.NAME, state_dir).pid() or -1

    async def consume(decode: bool) -> dict[str, Any]:
        consumer = build_consumer(settings, FeedbackConfig(group=f"{run_id}-{int(decode)}", batch_size=batch_size))
        # Partitions assigned, not joined: a group join is not throughput, but every fetch is timed.
        partitions = [TopicPartition(topics.feedback, p) for p in range(settings.topics.partitions)]
        consumer.assign(partitions)
        seen = 0
        t0, cpu0, broker0 = time.perf_counter(), time.process_time(), _cpu_s(broker_pid)
        await consumer.start()
        try:
            await consumer.seek_to_beginning(*partitions)
            while seen < len(keyed):
                batches = await consumer.getmany(timeout_ms=1000, max_records=batch_size)
                for records in batches.values():
                    if decode:
                        for r in records:
                            decode_feedback(r.key, r.value)
                    seen += len(records)
            seconds = time.perf_counter() - t0
            consumer_cpu, broker_cpu = time.process_time() - cpu0, _cpu_s(broker_pid) - broker0
        finally:
            await consumer.stop()
        return {"events_per_s": _rate(seen, seconds), "consumer_cpu_us_per_event": round(consumer_cpu / seen * 1e6, 1),
                "broker_cpu_us_per_event": round(broker_cpu / seen * 1e6, 1), "events": seen,
                "seconds": round(seconds, 3)}

    return {"fetch": asyncio.run(consume(False)), "fetch+decode": asyncio.run(consume(True))}


def baseline_checkout(rev: str, into: Path) -> Path:
    """A plain copy of the tree at ``rev`` (``git archive``): the old write path, run side by side."""
    repo = Path(__file__).resolve().parents[1]
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev], cwd=repo, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _by(runs: dict[str, dict[str, dict[str, Any]]], key: str) -> dict[str, dict[str, Any]]:
    return {load: {engine: r[key] for engine, r in by_engine.items()} for load, by_engine in runs.items()}


def run(
    n_events: int = 60_000,
    batch_size: int = 10_000,
    stage_events: int = 30_000,
    engines: Sequence[str] = ("old-batch", "batch", "batch+rollup", "faust"),
    loads: Sequence[str] = LOADS,
    baseline: str | None = None,
    timeout_s: float = 300.0,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Run the benchmark on a private broker and fresh databases; returns the JSON report.

    Every engine runs every load shape, interleaved per load, in this one run; ``old-*`` engines (the
    ``baseline`` revision's worker, e.g. the commit before the new write path) are skipped without one.
    """
    base = settings or Settings()
    run_id = uuid.uuid4().hex[:8]
    state_dir = Path(tempfile.mkdtemp(prefix="tagloop-bench-feedback-"))
    old_tree = baseline_checkout(baseline, state_dir / "baseline") if baseline else None
    engines = [e for e in engines if old_tree is not None or not e.startswith("old-")]
    load_start = os.getloadavg()
    bootstrap = broker.start_broker(state_dir)
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    keys: dict[str, dict[str, float]] = {}
    try:
        for shape in loads:
            tag_events, events = load(shape, f"{run_id}{shape[:2]}", n_events, base.data_dir)
            keyed = [(e.user_id.encode(), encode(e)) for e in events]
            tags = {e.listing_id: tuple(sorted({t.tag_id for t in e.tags})) for e in tag_events}
            runs[shape] = {}
            for engine in engines:
                runs[shape][engine] = _end_to_end(
                    base, bootstrap, state_dir, engine, tag_events, keyed, batch_size, timeout_s, old_tree
                )
                runs[shape][engine]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
            keys[shape] = {
                "per_micro_batch": distinct_keys_per_event(events, tags, batch_size),
                "per_rollup_step_of_30k_events": distinct_keys_per_event(events, tags, 30_000),
                "per_60k_events": distinct_keys_per_event(events, tags, 60_000),
            }
            if shape == "uniform":
                ceiling = broker_ceiling(base, bootstrap, state_dir, keyed, batch_size)
                stage_db = f"tagloop_bench_feedback_stages_{run_id}"
                url = stack.ensure_database(base.database_url, stage_db)
                try:
                    apply_migrations(url, MIGRATIONS)
                    stages = _stage_bench(url, keyed[:stage_events], tags, batch_size)
                finally:
                    stack.drop_database(base.database_url, stage_db)
        rates = _by(runs, "events_per_s")
        mismatches = _by(runs, "recount_mismatches")
        return {
            "benchmark": "feedback",
            "events_per_s": rates,
            "counted_events_per_s": _by(runs, "counted_events_per_s"),
            "postgres_cpu_us_per_event": _by(runs, "postgres_cpu_us_per_event"),
            "worker_cpu_us_per_event": _by(runs, "worker_cpu_us_per_event"),
            "distinct_keys_per_event": keys,
            "counter_freshness_p99_s": _by(runs, "counter_freshness_p99_s"),
            "recount_mismatches": mismatches,
            "exactly_once_verified": all(m == 0 for by in mismatches.values() for m in by.values()),
            "best": {shape: max(r, key=lambda e: r[e]) for shape, r in rates.items()},
            "runs": runs,
            "stages": stages if "uniform" in loads else None,
            "broker_ceiling": ceiling if "uniform" in loads else None,
            "events": n_events,
            "batch_size": batch_size,
            "baseline": baseline,
            "partitions": base.topics.partitions,
            "load_average_1m": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }
    finally:
        broker.stop_broker(state_dir)


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, sort_keys=True))
