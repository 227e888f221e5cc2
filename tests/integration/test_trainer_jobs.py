"""Trainer job records against the real Postgres: one job at a time, and recovery after SIGKILL."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.trainer.jobs import (
    INTERRUPTED,
    JobStateError,
    RunningJob,
    fail_job,
    finish_job,
    get_job,
    last_job,
    list_jobs,
    migrate,
    recover_interrupted,
    start_job,
    update_job,
)
from shared.db import applied_migrations

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]

# Starts a job, says its id, and sleeps holding it (until killed).
_HOLDER = """
import sys, time
from services.trainer.jobs import start_job, update_job
with start_job(sys.argv[1], "deep", "volume", "killed in a test") as job:
    if job is not None:
        update_job(job, dataset_fingerprint="f" * 64, model_name="tag_model", candidate_version=9)
    print(job.id if job is not None else "busy", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def url(database_url: str) -> str:
    migrate(database_url)
    return database_url


def test_migration_is_recorded_and_idempotent(url: str) -> None:
    assert migrate(url) == []
    assert [m.name for m in applied_migrations(url, "trainer")] == ["create_trainer_jobs"]


def test_two_concurrent_starts_one_gets_the_lock(url: str) -> None:
    ready, tried = threading.Barrier(2), threading.Barrier(2)
    got: list[int | None] = []

    def attempt() -> None:
        ready.wait()
        with start_job(url, "fast", "manual", "race") as job:
            got.append(job.id if job is not None else None)
            tried.wait()  # the winner holds the lock until the loser has tried
            if job is not None:
                finish_job(job, "succeeded", metrics={"f1": 0.5, "nan": math.nan})

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [g for g in got if g is not None]
    assert len(got) == 2 and len(winners) == 1
    record = get_job(url, winners[0])
    assert record is not None and record.status == "succeeded" and record.metrics == {"f1": 0.5, "nan": None}
    assert record.finished_at is not None and record.seconds is not None and record.seconds >= 0
    assert record.owner_pid == os.getpid()
    # Released with the block: the next job starts.
    with start_job(url, "deep", "schedule") as job:
        assert job is not None
        fail_job(job, "boom")
    last = last_job(url)
    assert last is not None and (last.kind, last.status, last.error) == ("deep", "failed", "boom")


def test_job_outcomes_are_recorded(url: str) -> None:
    figures = {"weighted_labels": 812.5, "threshold": 500.0}
    with start_job(url, "fast", "volume", "812.5 weighted labels", figures, model_name="tag_model") as job:
        assert job is not None
        running = update_job(job, dataset_fingerprint="ab" * 32, composition={"strong": 3, "per_tag": {}})
        assert (running.status, running.finished_at, running.trigger_figures) == ("running", None, figures)
        gate = {"blessed": False, "reasons": ["FAIL golden_micro_f1: 0.61 < 0.70 - 0.005"]}
        done = finish_job(job, "rejected", candidate_version=4, gate_decision=gate)
        assert (done.status, done.candidate_version, done.gate_decision) == ("rejected", 4, gate)
        assert done.dataset_fingerprint == "ab" * 32 and done.model_name == "tag_model"
        with pytest.raises(JobStateError):
            fail_job(job, "twice")
    # An exception inside the block fails the job and propagates.
    with pytest.raises(RuntimeError, match="export failed"), start_job(url, "deep", "manual") as job:
        assert job is not None
        raised_id = job.id
        raise RuntimeError("export failed")
    failed = get_job(url, raised_id)
    assert failed is not None and (failed.status, failed.error) == ("failed", "RuntimeError: export failed")
    # A block that ends without a result does not leave the job running.
    with start_job(url, "fast", "manual") as job:
        assert job is not None
        silent_id = job.id
    silent = get_job(url, silent_id)
    assert silent is not None and silent.status == "failed" and "without a result" in (silent.error or "")
    assert [j.id for j in list_jobs(url, limit=3)] == sorted([j.id for j in list_jobs(url, limit=3)], reverse=True)
    assert all(j.status == "rejected" for j in list_jobs(url, statuses=["rejected"]))


def test_job_killed_with_sigkill_is_marked_failed_and_frees_the_lock(url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.isdigit(), f"holder said {line!r}"
        job_id = int(line)
        # Alive: the lock is held, and recovery leaves the running job alone.
        with start_job(url, "fast", "manual") as other:
            assert other is None
        assert job_id not in [j.id for j in recover_interrupted(url)]
        assert (record := get_job(url, job_id)) is not None and record.status == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    recovered = _poll(lambda: [j for j in recover_interrupted(url) if j.id == job_id])
    assert len(recovered) == 1
    job = recovered[0]
    assert (job.status, job.error, job.candidate_version) == ("failed", INTERRUPTED, 9)
    assert job.finished_at is not None and job.owner_pid == proc.pid
    assert recover_interrupted(url) == []  # nothing left to recover
    holder: list[RunningJob] = []

    def free() -> bool:
        with start_job(url, "fast", "manual", "after the kill") as nxt:
            if nxt is not None:
                holder.append(nxt)
                finish_job(nxt, "succeeded")
        return bool(holder)

    assert _poll(free)


def _poll(check, timeout_s: float = 15.0):  # type: ignore[no-untyped-def]
    """``check()`` until it is truthy: Postgres ends a killed client's session when it sees the socket close."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)
