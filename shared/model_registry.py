"""The registry of model versions in Postgres: which version is champion, candidate, canary, ...

The model repository (:mod:`shared.model_repository`) holds the *files* of every version; this
registry holds their *status*, and only it decides which version serves. One row per
``(model_name, version)`` with its training job, dataset fingerprint and metrics, and a history
row for every status change (who moved it is in ``reason``).

Statuses and the moves allowed between them are :mod:`shared.model_status` (pure).
At most one champion per model (a partial unique index): making a version champion retires the
current one in the same transaction. Every change of one model runs under a transaction-scoped
advisory lock on its name, so concurrent promotions serialize instead of failing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from shared.db import Migration, apply_migrations, database_url
from shared.model_status import (
    ALLOWED_TRANSITIONS,
    InvalidTransition,
    ModelStatus,
    ModelVersion,
    RegistryError,
    StatusChange,
    check_transition,
)
from shared.settings import Settings

__all__ = [
    "ALLOWED_TRANSITIONS", "MIGRATIONS", "InvalidTransition", "ModelRegistry", "ModelStatus", "ModelVersion",
    "RegistryError", "StatusChange", "check_transition", "migrate",
]  # fmt: skip

SERVICE = "model_registry"
Conn = psycopg.Connection[DictRow]
# pg_advisory_xact_lock(key, hashtext(model_name)): "tagm" in ASCII, any constant shared by all processes.
_LOCK_CLASS = 0x7461676D


_STATUSES_SQL = ", ".join(f"'{s.value}'" for s in ModelStatus)

MIGRATIONS: list[Migration] = [
    Migration(
        SERVICE,
        1,
        "create_model_versions",
        f"""
        CREATE TABLE model_versions (
            model_name          text        NOT NULL,
            version             integer     NOT NULL CHECK (version > 0),
            status              text        NOT NULL CHECK (status IN ({_STATUSES_SQL})),
            training_job_id     text,
            dataset_fingerprint text,
            metrics             jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
            created_at          timestamptz NOT NULL DEFAULT now(),
            updated_at          timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (model_name, version)
        );
        -- At most one champion per model: what the tagger serves must never be ambiguous.
        CREATE UNIQUE INDEX model_versions_one_champion ON model_versions (model_name) WHERE status = 'champion';
        CREATE TABLE model_version_history (
            id          bigserial   PRIMARY KEY,
            model_name  text        NOT NULL,
            version     integer     NOT NULL,
            from_status text,
            to_status   text        NOT NULL,
            reason      text        NOT NULL DEFAULT '',
            changed_at  timestamptz NOT NULL DEFAULT now(),
            FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version) ON DELETE CASCADE
        );
        CREATE INDEX model_version_history_by_version ON model_version_history (model_name, version, id);
        """,
    ),
]


def migrate(settings_or_url: Settings | str) -> list[Migration]:
    """Apply the registry's schema (idempotent); returns the migrations applied now."""
    return apply_migrations(settings_or_url, MIGRATIONS)


def _finite(value: Any) -> Any:
    """JSON Postgres accepts: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _version(row: dict[str, Any]) -> ModelVersion:
    return ModelVersion(
        model_name=row["model_name"], version=row["version"], status=ModelStatus(row["status"]),
        training_job_id=row["training_job_id"], dataset_fingerprint=row["dataset_fingerprint"],
        metrics=dict(row["metrics"] or {}), created_at=row["created_at"], updated_at=row["updated_at"],
    )  # fmt: skip


_COLUMNS = "model_name, version, status, training_job_id, dataset_fingerprint, metrics, created_at, updated_at"


class ModelRegistry:
    """The registry in Postgres (blocking psycopg: CLI, trainer, tagger start-up via a thread).

    Parameters
    ----------
    settings_or_url : Settings or str
        Where the database is.
    connect_timeout_s : float
        How long a connection attempt may take before it fails.
    """

    def __init__(self, settings_or_url: Settings | str, connect_timeout_s: float = 5.0) -> None:
        self._target = settings_or_url
        self._timeout = max(1, int(connect_timeout_s))

    def _connect(self) -> Conn:
        return psycopg.connect(database_url(self._target), connect_timeout=self._timeout, row_factory=dict_row)

    @staticmethod
    def _lock(conn: Conn, model_name: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s::integer, hashtext(%s))", (_LOCK_CLASS, model_name))

    @staticmethod
    def _row(conn: Conn, model_name: str, version: int, lock: bool = False) -> ModelVersion | None:
        sql = f"SELECT {_COLUMNS} FROM model_versions WHERE model_name = %s AND version = %s"
        row = conn.execute(sql + (" FOR UPDATE" if lock else ""), (model_name, version)).fetchone()
        return _version(row) if row else None

    @staticmethod
    def _history(conn: Conn, name: str, version: int, old: ModelStatus | None, new: ModelStatus, reason: str) -> None:
        conn.execute(
            "INSERT INTO model_version_history (model_name, version, from_status, to_status, reason)"
            " VALUES (%s, %s, %s, %s, %s)",
            (name, version, old.value if old is not None else None, new.value, reason),
        )

    @staticmethod
    def _move(conn: Conn, current: ModelVersion, status: ModelStatus, reason: str) -> None:
        check_transition(current.status, status)
        conn.execute(
            "UPDATE model_versions SET status = %s, updated_at = now() WHERE model_name = %s AND version = %s",
            (status.value, current.model_name, current.version),
        )
        ModelRegistry._history(conn, current.model_name, current.version, current.status, status, reason)

    def _displace_champion(
        self, conn: Conn, model_name: str, version: int, displaced: ModelStatus, reason: str
    ) -> None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM model_versions WHERE model_name = %s AND status = 'champion' AND version <> %s"
            " FOR UPDATE",
            (model_name, version),
        ).fetchone()
        if row:
            self._move(conn, _version(row), displaced, f"replaced by version {version}: {reason}")

    def is_migrated(self) -> bool:
        """Whether the registry's tables exist in this database."""
        with self._connect() as conn:
            row = conn.execute("SELECT to_regclass('model_versions') IS NOT NULL AS ok").fetchone()
        return bool(row and row["ok"])

    def register(
        self,
        model_name: str,
        version: int,
        *,
        status: ModelStatus = ModelStatus.CANDIDATE,
        training_job_id: str | None = None,
        dataset_fingerprint: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        reason: str = "registered",
    ) -> ModelVersion:
        """Add a version (a candidate unless told otherwise); registering a champion retires the old one.

        Raises
        ------
        RegistryError
            If the version is registered already.
        """
        status = ModelStatus(status)
        with self._connect() as conn, conn.transaction():
            self._lock(conn, model_name)
            if self._row(conn, model_name, version) is not None:
                raise RegistryError(f"{model_name} version {version} is registered already")
            if status == ModelStatus.CHAMPION:
                self._displace_champion(conn, model_name, version, ModelStatus.RETIRED, reason)
            conn.execute(
                "INSERT INTO model_versions (model_name, version, status, training_job_id, dataset_fingerprint,"
                " metrics) VALUES (%s, %s, %s, %s, %s, %s)",
                (model_name, version, status.value, training_job_id, dataset_fingerprint,
                 Jsonb(_finite(dict(metrics or {})))),
            )  # fmt: skip
            self._history(conn, model_name, version, None, status, reason)
            created = self._row(conn, model_name, version)
        assert created is not None
        return created

    def set_status(
        self,
        model_name: str,
        version: int,
        status: ModelStatus,
        reason: str = "",
        *,
        displaced: ModelStatus = ModelStatus.RETIRED,
        metrics_update: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Move a version to ``status``; a new champion moves the current one to ``displaced``.

        ``metrics_update`` is merged into the version's ``metrics`` in the same transaction (e.g.
        ``{"canary_share": 0.1}``, which taggers read); merging into a version already in
        ``status`` records a history row with the same status and ``reason``.

        Raises
        ------
        RegistryError
            If the version is not registered.
        InvalidTransition
            If the move (or the displaced champion's move) is not allowed.
        """
        status = ModelStatus(status)
        with self._connect() as conn, conn.transaction():
            self._lock(conn, model_name)
            current = self._row(conn, model_name, version, lock=True)
            if current is None:
                raise RegistryError(f"{model_name} version {version} is not registered")
            if current.status == status and not metrics_update:
                return current
            if current.status != status:
                check_transition(current.status, status)
                if status == ModelStatus.CHAMPION:
                    self._displace_champion(conn, model_name, version, ModelStatus(displaced), reason)
                self._move(conn, current, status, reason)
            if metrics_update:
                self._merge_metrics(conn, current, metrics_update, reason if current.status == status else None)
            moved = self._row(conn, model_name, version)
        assert moved is not None
        return moved

    @staticmethod
    def _merge_metrics(conn: Conn, current: ModelVersion, update: Mapping[str, Any], history: str | None) -> None:
        conn.execute(
            "UPDATE model_versions SET metrics = metrics || %s, updated_at = now()"
            " WHERE model_name = %s AND version = %s",
            (Jsonb(_finite(dict(update))), current.model_name, current.version),
        )
        if history is not None:  # no status change: the history still says who changed what
            ModelRegistry._history(conn, current.model_name, current.version, current.status, current.status, history)

    @staticmethod
    def _previous_champion(conn: Conn, model_name: str) -> ModelVersion | None:
        row = conn.execute(
            f"SELECT {', '.join('v.' + c.strip() for c in _COLUMNS.split(','))} FROM model_version_history h"
            " JOIN model_versions v ON v.model_name = h.model_name AND v.version = h.version"
            " WHERE h.model_name = %s AND h.from_status = 'champion' AND h.to_status = 'retired'"
            " AND v.status = 'retired' ORDER BY h.id DESC LIMIT 1",
            (model_name,),
        ).fetchone()
        return _version(row) if row else None

    def previous_champion(self, model_name: str) -> ModelVersion | None:
        """The rollback target: the version most recently displaced as champion that is still ``retired``."""
        with self._connect() as conn:
            return self._previous_champion(conn, model_name)

    def rollback(self, model_name: str, reason: str = "rollback") -> tuple[ModelVersion, ModelVersion]:
        """Champion -> ``rolled-back``, the previous champion (:meth:`previous_champion`) -> champion, atomically.

        Returns
        -------
        (ModelVersion, ModelVersion)
            The rolled-back version and the restored champion.

        Raises
        ------
        RegistryError
            If the model has no champion, or no previous champion to restore.
        """
        with self._connect() as conn, conn.transaction():
            self._lock(conn, model_name)
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM model_versions WHERE model_name = %s AND status = 'champion' FOR UPDATE",
                (model_name,),
            ).fetchone()
            if row is None:
                raise RegistryError(f"{model_name} has no champion to roll back")
            champion = _version(row)
            target = self._previous_champion(conn, model_name)
            if target is None:
                raise RegistryError(f"{model_name} has no previous champion to restore")
            self._move(conn, champion, ModelStatus.ROLLED_BACK, reason)
            self._move(conn, target, ModelStatus.CHAMPION, f"restored: {reason}")
            rolled = self._row(conn, model_name, champion.version)
            restored = self._row(conn, model_name, target.version)
        assert rolled is not None and restored is not None
        return rolled, restored

    def get(self, model_name: str, version: int) -> ModelVersion | None:
        with self._connect() as conn:
            return self._row(conn, model_name, version)

    def champion(self, model_name: str) -> ModelVersion | None:
        """The version that serves ``model_name``, or None when it has no champion."""
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM model_versions WHERE model_name = %s AND status = 'champion'", (model_name,)
            ).fetchone()
        return _version(row) if row else None

    def list_versions(
        self, model_name: str | None = None, statuses: Sequence[ModelStatus] | None = None
    ) -> list[ModelVersion]:
        """Registered versions (of one model, of some statuses), by model then version."""
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM model_versions"
                " WHERE (%(m)s::text IS NULL OR model_name = %(m)s)"
                " AND (%(s)s::text[] IS NULL OR status = ANY(%(s)s::text[]))"
                " ORDER BY model_name, version",
                {"m": model_name, "s": [ModelStatus(s).value for s in statuses] if statuses is not None else None},
            ).fetchall()
        return [_version(r) for r in rows]

    def history(self, model_name: str, version: int | None = None) -> list[StatusChange]:
        """Status changes of a model (or one version), oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT model_name, version, from_status, to_status, reason, changed_at FROM model_version_history"
                " WHERE model_name = %(m)s AND (%(v)s::integer IS NULL OR version = %(v)s) ORDER BY id",
                {"m": model_name, "v": version},
            ).fetchall()
        return [
            StatusChange(
                r["model_name"], r["version"], ModelStatus(r["from_status"]) if r["from_status"] else None,
                ModelStatus(r["to_status"]), r["reason"], r["changed_at"],
            )
            for r in rows
        ]  # fmt: skip

    def seed_champion(self, repository: Path, model_name: str) -> ModelVersion | None:
        """Register the newest version on disk as champion when the registry knows no version of the model.

        Before the registry existed the tagger served the newest version in the repository (the
        shipped version 1); seeding keeps serving it. Its card gives the fingerprint and metrics.
        Returns the registered version, or None when nothing was done.
        """
        from shared.model_repository import latest_version, version_dir
        from shared.tagmodel.card import load_model_card

        newest = latest_version(repository, model_name)
        if newest is None:
            return None
        card = load_model_card(version_dir(repository, model_name, newest))
        with self._connect() as conn, conn.transaction():
            self._lock(conn, model_name)
            known = conn.execute("SELECT 1 FROM model_versions WHERE model_name = %s LIMIT 1", (model_name,))
            if known.fetchone() is not None:
                return None
            conn.execute(
                "INSERT INTO model_versions (model_name, version, status, dataset_fingerprint, metrics)"
                " VALUES (%s, %s, 'champion', %s, %s)",
                (model_name, newest, card.data_fingerprint, Jsonb(_finite(dict(card.metrics)))),
            )
            reason = "seeded: the newest version in the repository when the registry was empty"
            self._history(conn, model_name, newest, None, ModelStatus.CHAMPION, reason)
            return self._row(conn, model_name, newest)
