"""Postgres faults on the real stack: sessions terminated mid-transaction, checkpoint writes refused.

* The feedback worker's backends are terminated (``pg_terminate_backend``) again and again
  while batches are being written: nothing is lost or counted twice, and the same worker
  process reconnects by itself.
* The learner's backend is terminated while it writes a checkpoint: it reconnects and
  goes on, each event learned once.
* Checkpoint writes are refused (a trigger raising ``disk_full``): the learner keeps
  learning and serving, says ``degraded`` with the reason in its health and metrics,
  retries with backoff, and turns ``ok`` again once Postgres accepts writes.
* A dead letter that cannot be delivered holds checkpoints back: no checkpoint ever
  stores offsets past its original.

Terminations are aimed only at this test's backends: this session's private database
and the service's ``application_name``.
"""

from __future__ import annotations

import random
import re
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from services.feedback.app import APPLICATION_NAME
from services.feedback.loadgen import (
    OffsetRecorder,
    caught_up,
    engine_args,
    produce_feedback,
    produce_tags,
    start_worker,
    stored_offsets,
    synthetic_feedback,
    synthetic_tags,
    wait_caught_up,
)
from services.feedback.migrations import MIGRATIONS
from services.feedback.repository import recount_mismatches
from services.learner.checkpoint import Checkpoint, PostgresCheckpoints
from shared.db import apply_migrations
from shared.devstack.process import ManagedProcess, free_port
from shared.events import FeedbackEvent, FeedbackType
from shared.settings import Settings
from tests.integration.test_feedback_faults import archived, expected_listing_counts, progress, stored_listing_counts
from tests.integration.test_learner_support import checkpoint_with, feedback, learner_env, produce, wait_for
from tests.integration.test_learner_support import produce_feedback as produce_learner_feedback
from tests.integration.test_learner_support import produce_tags as produce_learner_tags

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Terminator:
    """Terminates, again and again, the backends of ``application_name`` caught inside a transaction.

    Runs in a thread: it looks every few ms for a backend of this database with an open
    transaction (running a statement, or between two), terminates it, then waits a random
    0.3–0.7 s before hunting again, so the kills land at varied points of the batches.
    """

    url: str
    application_name: str
    max_kills: int
    kills: list[tuple[float, str, str]] = field(default_factory=list)  # (when, state, statement)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="pg-terminator", daemon=True)

    def start(self) -> Terminator:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        rng = random.Random(0)
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set() and len(self.kills) < self.max_kills:
                row = conn.execute(
                    "SELECT pid, state, left(query, 60) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND application_name = %s"
                    " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
                    " AND state IN ('active', 'idle in transaction') ORDER BY random() LIMIT 1",
                    (self.application_name,),
                ).fetchone()
                if row is None:
                    time.sleep(0.005)
                    continue
                done = conn.execute("SELECT pg_terminate_backend(%s)", (row[0],)).fetchone()
                if done and done[0]:
                    self.kills.append((time.monotonic(), row[1], row[2]))
                self.stop.wait(rng.uniform(0.3, 0.7))


class ProgressWatch:
    """Records when the worker's stored offsets move (each move is one committed batch)."""

    def __init__(self, url: str, group: str, topic: str) -> None:
        self.url, self.group, self.topic = url, group, topic
        self.moves: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="progress-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last = progress(self.url, self.group, self.topic)
        while not self.stop.wait(0.02):
            now = progress(self.url, self.group, self.topic)
            if now != last:
                self.moves.append(time.monotonic())
                last = now

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)

    def recoveries(self, kills: list[float]) -> list[float]:
        """Seconds from each kill to the next committed batch."""
        return [min((m for m in self.moves if m > k), default=float("inf")) - k for k in kills]


@pytest.fixture
def ns() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def workers() -> Iterator[list[ManagedProcess]]:
    procs: list[ManagedProcess] = []
    yield procs
    for p in procs:
        p.stop(timeout_s=10)


# faust (19 s) in the slow suite: keeps the default one under 15 minutes
@pytest.mark.parametrize("engine", ["batch:2", pytest.param("faust", marks=pytest.mark.slow)])
def test_feedback_backends_terminated_mid_transaction(  # type: ignore[no-untyped-def]
    settings: Settings, database_url: str, ns: str, workers, engine: str
) -> None:
    url = database_url
    apply_migrations(url, MIGRATIONS)
    group = f"feedback-{ns}"
    topics = settings.topics
    tags = synthetic_tags(ns, 300)
    events = list(synthetic_feedback(ns, 15_000, n_users=500, n_listings=300))
    worker = start_worker(settings, group, f"fb-term-{ns}", "--batch-size", "500", *engine_args(engine))
    workers.append(worker)
    rec = OffsetRecorder(settings.kafka)
    produce_tags(rec, topics.tags, tags)
    assert wait_caught_up(url, group, rec.flush(), 90, worker=worker)
    pid = worker.pid()

    # A steady stream (~1,500 events/s, with producer duplicates) while backends are terminated.
    watch = ProgressWatch(url, group, topics.feedback)
    terminator = Terminator(url, APPLICATION_NAME, max_kills=12).start()
    duplicates = 0
    try:
        for start in range(0, len(events), 500):
            produce_feedback(rec, topics.feedback, events[start : start + 500])
            again = events[start : start + 500 : 17]  # producer duplicates
            produce_feedback(rec, topics.feedback, again)
            duplicates += len(again)
            rec.flush()
            time.sleep(0.3)
        targets = rec.flush()
        deadline = time.monotonic() + 30
        while len(terminator.kills) < 8 and time.monotonic() < deadline:
            if caught_up(stored_offsets(url, group), targets):
                break
            time.sleep(0.1)
        terminator.close()
        assert wait_caught_up(url, group, targets, 120, worker=worker)
    finally:
        terminator.close()
        watch.close()

    kills = terminator.kills
    assert len(kills) >= 5, f"only {len(kills)} transactions were caught and terminated"
    assert worker.running() and worker.pid() == pid, "the worker restarted instead of reconnecting"
    assert "Postgres unavailable" in worker.log_file.read_text(errors="replace")
    # Nothing lost, nothing counted twice.
    assert archived(url, ns) == (len(events), len(events))
    assert set(recount_mismatches(url).values()) == {0}
    expected = expected_listing_counts(tags, events)
    assert stored_listing_counts(url, ns) == {k: v for k, v in expected.listing.items() if v[0]}
    recoveries = watch.recoveries([k[0] for k in kills])
    assert max(recoveries) < 30
    print(
        f"feedback {engine}: {len(events)} events (+{duplicates} duplicates), {len(kills)} backends "
        f"terminated mid-transaction ({sorted({k[2].split()[0] for k in kills if k[2]})}), "
        f"next batch committed {statistics.median(recoveries):.2f}s (median) / {max(recoveries):.2f}s (max) later"
    )


# -- the learner --------------------------------------------------------------------------

LISTINGS = {f"l{i}": [f"tag{i % 7}", f"tag{i % 5 + 10}"] for i in range(50)}
KINDS = [FeedbackType.CLICK, FeedbackType.IMPRESSION, FeedbackType.PURCHASE, FeedbackType.ADD_TO_CART]
TOKEN = "faults-token"


def learner_events(start: int, n: int) -> list[FeedbackEvent]:
    return [feedback(start + i, f"user{i % 97}", f"l{i % 50}", KINDS[i % 4]) for i in range(n)]


def assert_learned_once(
    cp: Checkpoint | None, settings: Settings, events: list[FeedbackEvent], dups: int, bad: int
) -> None:
    """Like the kill -9 test: every event learned exactly once, offsets past every record."""
    assert cp is not None
    c = cp.model.counters
    assert c.events_seen == len(events)
    assert c.duplicates == dups
    engaged = [e for e in events if e.type != FeedbackType.IMPRESSION]
    assert c.positives == sum(len(LISTINGS[e.listing_id]) for e in engaged)
    assert sum(cp.offsets[settings.topics.feedback].values()) == len(events) + dups + bad


def alive(proc: ManagedProcess) -> bool:
    if not proc.running():
        raise AssertionError(f"{proc.name} exited:\n{proc.log_file.read_text(errors='replace')[-3000:]}")
    return True


def terminate_checkpoint_write(url: str, timeout_s: float = 60) -> float:
    """Make the learner's next checkpoint INSERT wait on a lock, terminate its backend there; returns when.

    ``SHARE`` mode blocks inserts (and so the checkpoint transaction) but not reads; the
    backend to terminate is the one whose checkpoint INSERT waits on that lock.
    """
    with psycopg.connect(url) as locker, psycopg.connect(url, autocommit=True) as admin:
        locker.execute("LOCK TABLE learner_checkpoints IN SHARE MODE")
        row = wait_for(
            lambda: admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
                " AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO learner_checkpoints%'"
            ).fetchone(),
            timeout_s, "the learner's checkpoint to wait on the lock", interval_s=0.02,
        )
        killed = admin.execute("SELECT pg_terminate_backend(%s)", (row[0],)).fetchone()
        assert killed is not None and killed[0]
        at = time.monotonic()
        locker.rollback()
    return at


def test_learner_backend_terminated_mid_checkpoint(settings: Settings, tmp_path: Path) -> None:
    name = f"term-{uuid.uuid4().hex[:6]}"
    repo = PostgresCheckpoints(settings.database_url, name)
    repo.migrate()
    produce_learner_tags(settings, LISTINGS)
    events = learner_events(0, 3000)
    produce_learner_feedback(settings, events)
    produce_learner_feedback(settings, events[::60])  # 50 duplicates
    produce(settings, settings.topics.feedback, [(b"user1", b"{broken")])

    proc = ManagedProcess(f"learner-{name}", tmp_path)
    env = learner_env(settings, name, tmp_path)
    proc.start([sys.executable, "-m", "services.learner.main"], env=env, cwd=REPO_ROOT)
    recoveries: list[float] = []
    try:
        wait_for(checkpoint_with(repo, 3000), 90, "the first 3,000 events checkpointed")
        pid = proc.pid()
        for round_ in range(3):
            more = learner_events(len(events), 1000)
            events += more
            produce_learner_feedback(settings, more)
            before = repo.latest_id() or 0
            killed_at = terminate_checkpoint_write(settings.database_url)
            # The write that was killed is retried (after a short backoff) on a new connection.
            wait_for(lambda b=before: alive(proc) and (repo.latest_id() or 0) > b, 60,
                     f"a checkpoint after termination {round_}", interval_s=0.02)
            recoveries.append(time.monotonic() - killed_at)
            assert proc.running() and proc.pid() == pid, f"the learner died:\n{proc.log_file.read_text()[-3000:]}"
        wait_for(checkpoint_with(repo, len(events)), 60, f"a checkpoint with all {len(events)} events")
        assert proc.stop(timeout_s=30)  # SIGTERM: final checkpoint
    finally:
        proc.stop()

    log_text = proc.log_file.read_text(errors="replace")
    assert log_text.count("checkpoint failed") >= 3 and "Traceback" not in log_text
    assert_learned_once(repo.latest(), settings, events, dups=50, bad=1)
    print(f"learner: {len(events)} events, 3 checkpoint writes terminated, next checkpoint "
          f"{', '.join(f'{r:.2f}s' for r in recoveries)} later, each event learned once")


class DiskFull:
    """A trigger that makes every checkpoint insert of one learner fail like a full disk (SQLSTATE 53100)."""

    def __init__(self, url: str, learner: str) -> None:
        self.url = url
        suffix = uuid.uuid4().hex[:8]
        self.function, self.trigger = sql.Identifier(f"disk_full_{suffix}"), sql.Identifier(f"disk_full_{suffix}")
        self.learner = learner

    def __enter__(self) -> DiskFull:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL(
                "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION USING"
                " ERRCODE = 'disk_full', MESSAGE = 'could not extend file \"base/1/2\": No space left on device';"
                " END $$"
            ).format(self.function))
            conn.execute(sql.SQL(
                "CREATE TRIGGER {} BEFORE INSERT ON learner_checkpoints FOR EACH ROW WHEN (NEW.learner = {})"
                " EXECUTE FUNCTION {}()"
            ).format(self.trigger, sql.Literal(self.learner), self.function))
        return self

    def __exit__(self, *exc: object) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON learner_checkpoints").format(self.trigger))
            conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(self.function))


class LearnerHttp:
    """The learner's HTTP API: health, metrics, stats."""

    def __init__(self, port: int) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

    def health(self, path: str = "/healthz") -> tuple[int, dict[str, Any]]:
        try:
            resp = self.http.get(path)
        except httpx.TransportError:
            return 0, {}
        return resp.status_code, resp.json()

    def health_if(self, status: str) -> dict[str, Any] | None:
        body = self.health()[1]
        return body if body.get("status") == status else None

    def metrics(self) -> dict[str, float]:
        text = self.http.get("/metrics").text
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}

    def events_seen(self) -> int:
        resp = self.http.get("/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"})
        return int(resp.json()["events_seen"]) if resp.status_code == 200 else -1

    def close(self) -> None:
        self.http.close()


@pytest.mark.slow  # 20-25 s: keeps the default suite under 15 minutes
def test_learner_checkpoint_writes_refused_then_accepted(settings: Settings, tmp_path: Path) -> None:
    name = f"full-{uuid.uuid4().hex[:6]}"
    repo = PostgresCheckpoints(settings.database_url, name)
    repo.migrate()
    produce_learner_tags(settings, LISTINGS)
    events = learner_events(0, 2000)
    produce_learner_feedback(settings, events)

    port = free_port()
    env = learner_env(settings, name, tmp_path) | {
        "TAGLOOP_LEARNER__HTTP_PORT": str(port),
        "TAGLOOP_LEARNER__API_TOKEN": TOKEN,
        "TAGLOOP_LEARNER__CHECKPOINT_INTERVAL_S": "0.5",
    }
    proc = ManagedProcess(f"learner-{name}", tmp_path)
    proc.start([sys.executable, "-m", "services.cli", "learner", "run", "--serve"], env=env, cwd=REPO_ROOT)
    api = LearnerHttp(port)
    try:
        wait_for(checkpoint_with(repo, 2000), 90, "the first 2,000 events checkpointed")
        wait_for(lambda: api.health()[0] == 200, 30, "the API")
        assert api.health() == (200, {"status": "ok", "model_loaded": True})
        assert api.health("/readyz") == (200, {"status": "ok", "model_loaded": True})
        ok_before = api.metrics()["tagloop_learner_checkpoint_last_success_timestamp_seconds"]
        assert ok_before > 0
        pid = proc.pid()

        with DiskFull(settings.database_url, name):
            more = learner_events(2000, 2000)
            events += more
            produce_learner_feedback(settings, more)
            refused_at = time.monotonic()
            body = wait_for(lambda: api.health_if("degraded"), 30, "health to say degraded")
            assert any("No space left on device" in r and "checkpoint" in r for r in body["reasons"]), body
            # Still learning and serving from the live model, though nothing new is checkpointed.
            wait_for(lambda: api.events_seen() == 4000, 60, "the 2,000 new events learned while checkpoints fail")
            status, ready = api.health("/readyz")
            assert status == 200 and ready["status"] == "degraded"
            time.sleep(max(0.0, 10 - (time.monotonic() - refused_at)))
            degraded = api.metrics()
            cp = repo.latest()
            assert cp is not None and cp.model.counters.events_seen == 2000
            assert proc.running() and proc.pid() == pid
        accepted_at = time.monotonic()
        wait_for(lambda: api.health_if("ok"), 60, "health back to ok")
        healed_s = time.monotonic() - accepted_at
        wait_for(checkpoint_with(repo, 4000), 30, "a checkpoint with all 4,000 events")
        healed = api.metrics()
        assert proc.stop(timeout_s=30)  # SIGTERM: final checkpoint
    finally:
        proc.stop()
        api.close()

    failures = degraded["tagloop_learner_checkpoint_failures_total"]
    assert failures >= 3
    assert degraded["tagloop_learner_degraded"] == 1 and healed["tagloop_learner_degraded"] == 0
    assert degraded["tagloop_learner_checkpoint_last_success_timestamp_seconds"] <= ok_before + 1
    assert healed["tagloop_learner_checkpoint_last_success_timestamp_seconds"] > ok_before
    # Backoff: the waits between attempts grew (0.5 s doubling), not one try per 0.5 s interval.
    log_text = proc.log_file.read_text(errors="replace")
    waits = [float(w) for w in re.findall(r"checkpoint failed \(\d+ in a row\), next try in ([\d.]+)s", log_text)]
    assert waits[:4] == [0.5, 1.0, 2.0, 4.0], waits
    assert "Traceback" not in log_text
    assert_learned_once(repo.latest(), settings, events, dups=0, bad=0)
    print(f"learner, disk full for ~10s: {int(failures)} failed checkpoint writes (waits {waits}), "
          f"4000 events learned and served meanwhile, health ok {healed_s:.1f}s after writes were accepted again")
