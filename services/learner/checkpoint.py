"""Checkpoints of the learner in Postgres: the pickled model and the offsets it has consumed, together.

A checkpoint row is written in one transaction, so the model state and the offsets
of the first event it has *not* learned always match: restoring a checkpoint and
seeking to its offsets re-learns exactly what the lost state had learned after it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

from services.learner.migrations import MIGRATIONS
from services.learner.model import AffinityModel
from shared.db import apply_migrations, connect

# topic -> partition -> next offset to read
Offsets = dict[str, dict[int, int]]
# A checkpoint write must fail (and be retried) rather than hang on an unreachable server.
CONNECT_TIMEOUT_S = 10


@dataclass
class Checkpoint:
    """A model with the offsets of the first events it has not learned."""

    model: AffinityModel
    offsets: Offsets = field(default_factory=dict)
    id: int | None = None
    created_at: datetime | None = None


class CheckpointRepository(Protocol):
    """Where checkpoints live; the loop and the API only need these two calls."""

    def save(self, checkpoint: Checkpoint) -> int: ...

    def latest(self) -> Checkpoint | None: ...


def dumps(model: AffinityModel) -> bytes:
    return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)


def loads(blob: bytes) -> AffinityModel:
    # Only ever our own rows: the table is written by the learner alone.
    model = pickle.loads(blob)
    if not isinstance(model, AffinityModel):
        raise TypeError(f"checkpoint holds {type(model).__name__}, not AffinityModel")
    return model


class PostgresCheckpoints:
    """Checkpoints of one named learner in ``learner_checkpoints``, keeping the newest ``keep``.

    Parameters
    ----------
    database_url
        Postgres URL.
    learner
        Name of the learner whose checkpoints these are (several may share a database).
    keep
        How many checkpoints to keep; older ones are deleted in the same transaction.
    """

    def __init__(self, database_url: str, learner: str = "default", keep: int = 3):
        self.database_url = database_url
        self.learner = learner
        self.keep = keep
        # How the learner's sessions show in pg_stat_activity (Postgres keeps 63 bytes of it).
        self.application_name = f"tagloop-learner-{learner}"[:63]

    def _connect(self) -> psycopg.Connection:
        # A fresh connection per call: after a restart or a terminated session the next call just works.
        return connect(self.database_url, application_name=self.application_name, connect_timeout=CONNECT_TIMEOUT_S)

    def migrate(self) -> None:
        apply_migrations(self.database_url, MIGRATIONS)

    def save(self, checkpoint: Checkpoint) -> int:
        """Write the checkpoint atomically; returns its id."""
        model = checkpoint.model
        checkpoint.id, checkpoint.created_at = self.save_serialized(
            dumps(model), checkpoint.offsets, model.name, model.counters.events_seen, model.stats()
        )
        return checkpoint.id

    def save_serialized(
        self, blob: bytes, offsets: Offsets, model_name: str, events_seen: int, stats: dict[str, Any]
    ) -> tuple[int, datetime]:
        """Write an already pickled model with its offsets in one transaction; returns (id, created_at).

        The learner pickles in its loop (a consistent snapshot) and writes from a
        background thread, so the loop does not wait for Postgres.
        """
        as_json = {t: {str(p): o for p, o in parts.items()} for t, parts in offsets.items()}
        with self._connect() as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO learner_checkpoints (learner, model_name, events_seen, offsets, stats, state)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id, created_at",
                (self.learner, model_name, events_seen, Jsonb(as_json), Jsonb(stats), blob),
            ).fetchone()
            assert row is not None
            conn.execute(
                "DELETE FROM learner_checkpoints WHERE learner = %s AND id NOT IN"
                " (SELECT id FROM learner_checkpoints WHERE learner = %s ORDER BY id DESC LIMIT %s)",
                (self.learner, self.learner, self.keep),
            )
        return int(row[0]), row[1]

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint, or ``None`` when this learner has none."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT id, created_at, offsets, state FROM learner_checkpoints"
                " WHERE learner = %s ORDER BY id DESC LIMIT 1",
                (self.learner,),
            ).fetchone()
        if row is None:
            return None
        offsets = {t: {int(p): int(o) for p, o in parts.items()} for t, parts in row[2].items()}
        return Checkpoint(model=loads(row[3]), offsets=offsets, id=int(row[0]), created_at=row[1])

    def latest_id(self) -> int | None:
        """Id of the newest checkpoint without loading it (cheap freshness check for the API)."""
        with self._connect() as conn:
            row = conn.execute("SELECT max(id) FROM learner_checkpoints WHERE learner = %s", (self.learner,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])


def save_forked(repo: PostgresCheckpoints, model: AffinityModel, offsets: Offsets) -> Callable[[], int]:
    """Snapshot ``model`` by forking, then pickle and write it from the child; returns a waiter.

    The fork (tens of ms) is the only pause of the caller: the child holds a
    copy-on-write image of the model exactly as it is now, so learning continues
    in the parent while the child pickles (hundreds of ms for a large model) and
    writes. Calling the waiter blocks until the child is done and returns the
    checkpoint id; it raises if the child failed. POSIX only (see :func:`can_fork`).
    """
    read_end, write_end = os.pipe()
    stats = model.stats()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        raise
    if pid == 0:  # child: touch nothing but the snapshot and a fresh Postgres connection
        code = 1
        try:
            os.close(read_end)
            cp_id, _ = repo.save_serialized(dumps(model), offsets, model.name, model.counters.events_seen, stats)
            os.write(write_end, str(cp_id).encode())
            code = 0
        except BaseException as exc:
            with contextlib.suppress(Exception):
                os.write(write_end, f"error: {type(exc).__name__}: {exc}".encode()[:4000])
        finally:
            os._exit(code)  # no atexit handlers, no Kafka client destructors in the child
    os.close(write_end)

    def wait() -> int:
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0 or not answer.isdigit():
            raise RuntimeError(f"checkpoint child {pid} failed: {answer or 'no answer'}")
        return int(answer)

    return wait


def can_fork() -> bool:
    return hasattr(os, "fork")
