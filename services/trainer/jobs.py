"""Training jobs recorded in Postgres (``trainer_jobs``), one at a time across every trainer process.

:func:`start_job` is a context manager that opens the job's own connection and takes a
session-level advisory lock on it (:data:`JOB_LOCK_KEY`): while the job runs no other trainer
process can start one (it gets ``None``). The lock lives exactly as long as the job's
connection, so a process that dies, even by SIGKILL, frees it when Postgres notices the
connection is gone. The same connection also holds a per-job lock
(``pg_advisory_lock(ALIVE_LOCK_CLASS, id)``): the proof that a ``running`` row's process is alive.
:func:`recover_interrupted` (call it when a trainer starts) marks every ``running`` job
without that proof as failed with the error ``"interrupted"``. A job changes what serves only
through the model registry, after the gate, so an interrupted job has deployed nothing: at most
its candidate version is left registered, which the row names.

Examples
--------
>>> with start_job(settings, "fast", "volume", "812 weighted labels since job 4") as job:  # doctest: +SKIP
...     if job is not None:                       # None: another trainer process runs a job
...         update_job(job, dataset_fingerprint=labels.fingerprint, composition=labels.composition.to_dict())
...         ...                                   # train, export a candidate, run the gate
...         finish_job(job, "succeeded", candidate_version=7, metrics=m, gate_decision=decision.to_dict())
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from services.trainer.migrations import MIGRATIONS
from shared.db import Migration, apply_migrations, database_url
from shared.settings import Settings

log = logging.getLogger(__name__)

JobKind = Literal["fast", "deep"]
# "trnjob" in ASCII: pg_try_advisory_lock(JOB_LOCK_KEY) is held by the connection of the running job.
JOB_LOCK_KEY = 0x74726E6A6F62
# "tjob": pg_advisory_lock(ALIVE_LOCK_CLASS, job id) is held while the job's process is alive.
ALIVE_LOCK_CLASS = 0x746A6F62
INTERRUPTED = "interrupted"

_COLUMNS = (
    "id, kind, status, trigger_kind, trigger_reason, trigger_figures, dataset_fingerprint, composition,"
    " model_name, candidate_version, metrics, gate_decision, error, owner_pid, owner_host,"
    " created_at, started_at, finished_at"
)
# Alive: the job's connection holds its per-job lock in this database (two-int4-key form: objsubid 2).
_ALIVE = """EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = %(cls)s::bigint::oid AND l.objid = j.id::bigint::oid)"""


class JobStateError(RuntimeError):
    """A job was finished twice, or its row is no longer ``running``."""


@dataclass(frozen=True)
class JobRecord:
    """One row of ``trainer_jobs``."""

    id: int
    kind: str
    status: str
    trigger_kind: str
    trigger_reason: str
    trigger_figures: dict[str, Any]
    dataset_fingerprint: str | None
    composition: dict[str, Any] | None
    model_name: str | None
    candidate_version: int | None
    metrics: dict[str, Any] | None
    gate_decision: dict[str, Any] | None
    error: str | None
    owner_pid: int | None
    owner_host: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def seconds(self) -> float | None:
        """Wall time from start to finish (``None`` while unfinished)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (timestamps as ISO strings)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in out.items()}


@dataclass
class RunningJob:
    """A job this process runs; its connection holds the locks (see the module's docstring)."""

    id: int
    kind: str
    conn: psycopg.Connection[DictRow]
    finished: bool = False


def migrate(settings_or_url: Settings | str) -> list[Migration]:
    """Apply the trainer's schema (``tagloop db migrate`` applies it too)."""
    return apply_migrations(settings_or_url, MIGRATIONS)


@contextmanager
def start_job(
    settings_or_url: Settings | str,
    kind: JobKind,
    trigger_kind: str,
    trigger_reason: str = "",
    trigger_figures: Mapping[str, Any] | None = None,
    *,
    model_name: str | None = None,
    connect_timeout_s: float = 5.0,
) -> Iterator[RunningJob | None]:
    """Record a ``running`` job and hold the one-job lock for the ``with`` block; ``None`` if another job runs.

    The body should end with :func:`finish_job` or :func:`fail_job`. An exception escaping it
    marks the job failed (with the exception) and propagates; a body that ends without either
    marks it failed too: a job never stays ``running`` after its block.
    """
    if kind not in ("fast", "deep"):
        raise ValueError(f"job kind must be fast or deep, got {kind!r}")
    conn = psycopg.connect(
        database_url(settings_or_url),
        autocommit=True,
        row_factory=dict_row,
        connect_timeout=max(1, round(connect_timeout_s)),
    )
    try:
        got = conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (JOB_LOCK_KEY,)).fetchone()
        if not got or not got["got"]:
            yield None
            return
        # Row and per-job lock commit together: recovery never sees this row without its lock.
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO trainer_jobs (kind, status, trigger_kind, trigger_reason, trigger_figures, model_name,"
                " owner_pid, owner_host, started_at) VALUES (%s, 'running', %s, %s, %s, %s, %s, %s, now())"
                " RETURNING id",
                (
                    kind,
                    trigger_kind,
                    trigger_reason,
                    _json(trigger_figures or {}),
                    model_name,
                    os.getpid(),
                    socket.gethostname(),
                ),
            ).fetchone()
            assert row is not None
            conn.execute("SELECT pg_advisory_lock(%s, %s)", (ALIVE_LOCK_CLASS, row["id"]))
        job = RunningJob(row["id"], kind, conn)
        log.info("trainer job %d (%s) started: %s %s", job.id, kind, trigger_kind, trigger_reason)
        try:
            yield job
        except BaseException as exc:
            if not job.finished:
                _fail_quietly(job, f"{type(exc).__name__}: {exc}")
            raise
        if not job.finished:
            fail_job(job, "the job ended without a result (neither finish_job nor fail_job)")
    finally:
        conn.close()  # ends the session: both locks are released


def update_job(
    job: RunningJob,
    *,
    dataset_fingerprint: str | None = None,
    composition: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    candidate_version: int | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> JobRecord:
    """Record progress of a running job (only the fields given); e.g. its dataset before training starts."""
    return _update(job, "running", dataset_fingerprint=dataset_fingerprint, composition=composition,
                   model_name=model_name, candidate_version=candidate_version, metrics=metrics)  # fmt: skip


def finish_job(
    job: RunningJob,
    status: Literal["succeeded", "rejected"] = "succeeded",
    *,
    candidate_version: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    gate_decision: Mapping[str, Any] | None = None,
) -> JobRecord:
    """End a job with a result: ``succeeded`` (candidate blessed) or ``rejected`` (the gate said no)."""
    if status not in ("succeeded", "rejected"):
        raise ValueError(f"finish_job status must be succeeded or rejected, got {status!r}; use fail_job")
    return _update(job, status, candidate_version=candidate_version, metrics=metrics, gate_decision=gate_decision)


def fail_job(job: RunningJob, error: str) -> JobRecord:
    """End a job as ``failed`` with ``error``."""
    return _update(job, "failed", error=error[:10_000])


def recover_interrupted(settings_or_url: Settings | str) -> list[JobRecord]:
    """Mark ``running`` jobs whose process is gone (no per-job lock) failed with error ``"interrupted"``.

    Safe at any time, also while a live job runs (its lock proves it alive). Returns the jobs
    it marked, so the caller can retire their candidate versions.
    """
    with psycopg.connect(database_url(settings_or_url), autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute(
            f"UPDATE trainer_jobs j SET status = 'failed', error = %(err)s, finished_at = now()"
            f" WHERE j.status = 'running' AND NOT {_ALIVE} RETURNING {_COLUMNS}",
            {"err": INTERRUPTED, "cls": ALIVE_LOCK_CLASS},
        ).fetchall()
    for r in rows:
        log.warning("trainer job %d (pid %s on %s) was interrupted: marked failed", r["id"], r["owner_pid"],
                    r["owner_host"])  # fmt: skip
    return [JobRecord(**r) for r in sorted(rows, key=lambda r: r["id"])]


def get_job(settings_or_url: Settings | str, job_id: int) -> JobRecord | None:
    rows = _select(settings_or_url, "WHERE id = %(id)s", {"id": job_id})
    return rows[0] if rows else None


def last_job(settings_or_url: Settings | str, kind: JobKind | None = None) -> JobRecord | None:
    """The most recently started job (of ``kind``), or ``None``."""
    rows = _select(settings_or_url, "WHERE %(k)s::text IS NULL OR kind = %(k)s ORDER BY id DESC LIMIT 1", {"k": kind})
    return rows[0] if rows else None


def list_jobs(
    settings_or_url: Settings | str,
    limit: int = 50,
    kind: JobKind | None = None,
    statuses: Sequence[str] | None = None,
) -> list[JobRecord]:
    """The newest ``limit`` jobs, newest first, optionally of one kind and some statuses."""
    return _select(
        settings_or_url,
        "WHERE (%(k)s::text IS NULL OR kind = %(k)s) AND (%(s)s::text[] IS NULL OR status = ANY(%(s)s::text[]))"
        " ORDER BY id DESC LIMIT %(n)s",
        {"k": kind, "s": list(statuses) if statuses is not None else None, "n": limit},
    )


def _select(settings_or_url: Settings | str, where: str, params: Mapping[str, Any]) -> list[JobRecord]:
    with psycopg.connect(database_url(settings_or_url), autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM trainer_jobs {where}".encode(), params).fetchall()
    return [JobRecord(**r) for r in rows]


_JSON_FIELDS = frozenset({"composition", "metrics", "gate_decision"})


def _update(job: RunningJob, status: str, **values: Any) -> JobRecord:
    if job.finished:
        raise JobStateError(f"trainer job {job.id} is finished already")
    given = {k: _json(v) if k in _JSON_FIELDS else v for k, v in values.items() if v is not None}
    sets = [f"{k} = %({k})s" for k in given] + ["status = %(status)s"]
    if status != "running":
        sets.append("finished_at = now()")
    row = job.conn.execute(
        f"UPDATE trainer_jobs SET {', '.join(sets)} WHERE id = %(id)s AND status = 'running'"
        f" RETURNING {_COLUMNS}".encode(),
        {**given, "status": status, "id": job.id},
    ).fetchone()
    if row is None:
        raise JobStateError(f"trainer job {job.id} is no longer running")
    if status != "running":
        job.finished = True
        log.info("trainer job %d %s", job.id, status)
    return JobRecord(**row)


def _fail_quietly(job: RunningJob, error: str) -> None:
    try:
        fail_job(job, error)
    except (psycopg.Error, JobStateError) as exc:
        # Postgres unreachable: the row stays running, and recover_interrupted marks it once our
        # connection (and with it the job's lock) is gone.
        log.error("trainer job %d: could not record its failure (%s)", job.id, exc)


def _json(value: Any) -> Jsonb:
    """jsonb of metrics or figures; NaN and infinities (not JSON) become null."""
    return Jsonb(_finite(value), dumps=lambda v: json.dumps(v, default=_plain, allow_nan=False))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (``item``/``tolist``), anything else as its string."""
    for attr in ("tolist", "item"):
        if hasattr(value, attr):
            return _finite(getattr(value, attr)())
    return str(value)
