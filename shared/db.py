"""Postgres helpers shared by every service: connections, pools and a tiny migrations runner.

Each service keeps its schema as a list of :class:`Migration` in its own module
(``services/<name>/migrations.py``) and applies it with :func:`apply_migrations`
at start-up (or via ``tagloop db migrate``). Applied migrations are recorded in
``schema_migrations(service, version, name, applied_at)``; every migration runs in
its own transaction together with its record, under an advisory lock, so two
processes starting at once never apply one twice and a failed migration leaves
nothing behind.

Examples
--------
>>> m = Migration("feedback", 1, "create_counts", "CREATE TABLE counts (k text PRIMARY KEY)")
>>> m.key
('feedback', 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from shared.settings import Settings

# Any constant works, as long as every tagloop process uses the same one ("tagloop" in ASCII).
MIGRATIONS_LOCK_KEY = 0x7461676C6F6F70

_BOOTSTRAP_SQL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    service     text        NOT NULL,
    version     integer     NOT NULL,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, version)
)
"""


class MigrationError(RuntimeError):
    """A migration list is inconsistent with itself or with what the database recorded."""


@dataclass(frozen=True)
class Migration:
    """One schema change of one service.

    Parameters
    ----------
    service
        Owner of the change (``"feedback"``, ``"learner"``); versions are per service.
    version
        Position in the service's history, starting at 1; never reuse or renumber.
    name
        Short human name, recorded and checked so a renamed migration is noticed.
    sql
        One or more SQL statements (no parameters), run in one transaction.
    """

    service: str
    version: int
    name: str
    sql: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.service, self.version)


@dataclass(frozen=True)
class AppliedMigration:
    """A row of ``schema_migrations``."""

    service: str
    version: int
    name: str
    applied_at: datetime


def database_url(settings_or_url: Settings | str) -> str:
    return settings_or_url if isinstance(settings_or_url, str) else settings_or_url.database_url


def connect(settings_or_url: Settings | str, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection:
    """A blocking connection (CLI, migrations, tests); services use :func:`async_pool`."""
    return psycopg.connect(database_url(settings_or_url), autocommit=autocommit, **kwargs)


async def connect_async(
    settings_or_url: Settings | str, *, autocommit: bool = False, **kwargs: Any
) -> psycopg.AsyncConnection:
    """An asyncio connection, for code running inside an event loop (faust agents)."""
    return await psycopg.AsyncConnection.connect(database_url(settings_or_url), autocommit=autocommit, **kwargs)


def async_pool(
    settings_or_url: Settings | str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    name: str | None = None,
    timeout_s: float = 30.0,
    **kwargs: Any,
) -> AsyncConnectionPool:
    """An unopened asyncio pool; open it inside the running loop (``await pool.open()``).

    Connections are checked on borrow, so a pool survives a Postgres restart: the
    broken connections are discarded and new ones made once the server is back.
    """
    return AsyncConnectionPool(
        database_url(settings_or_url),
        min_size=min_size,
        max_size=max_size,
        name=name,
        timeout=timeout_s,
        open=False,
        check=AsyncConnectionPool.check_connection,
        **kwargs,
    )


def validate_migrations(migrations: Iterable[Migration]) -> list[Migration]:
    """Sorted by (service, version); raises :class:`MigrationError` on duplicates or bad versions."""
    seen: dict[tuple[str, int], Migration] = {}
    for m in migrations:
        if m.version < 1:
            raise MigrationError(f"{m.service} migration {m.name!r}: version must be >= 1")
        if m.key in seen:
            raise MigrationError(f"{m.service} version {m.version} defined twice ({seen[m.key].name!r}, {m.name!r})")
        seen[m.key] = m
    return sorted(seen.values(), key=lambda m: m.key)


def apply_migrations(settings_or_url: Settings | str, migrations: Sequence[Migration]) -> list[Migration]:
    """Apply the migrations not yet recorded; returns those applied by this call, in order.

    Idempotent and safe when several processes race: each migration runs in one
    transaction that first takes a transaction-scoped advisory lock, re-checks
    ``schema_migrations`` and only then runs the SQL and records it.

    Raises
    ------
    MigrationError
        When a recorded migration has a different name than the given one (a
        renumbered or edited history), or when the list has duplicate versions.
    """
    todo = validate_migrations(migrations)
    applied: list[Migration] = []
    with connect(settings_or_url) as conn:
        with conn.transaction():
            # The bootstrap itself races (CREATE TABLE IF NOT EXISTS is not atomic in the catalog).
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATIONS_LOCK_KEY,))
            conn.execute(_BOOTSTRAP_SQL)
        for m in todo:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATIONS_LOCK_KEY,))
                row = conn.execute(
                    "SELECT name FROM schema_migrations WHERE service = %s AND version = %s", m.key
                ).fetchone()
                if row is not None:
                    if row[0] != m.name:
                        raise MigrationError(
                            f"{m.service} version {m.version} is recorded as {row[0]!r}, code says {m.name!r}"
                        )
                    continue
                conn.execute(m.sql.encode())  # bytes: no parameter parsing, several statements allowed
                conn.execute(
                    "INSERT INTO schema_migrations (service, version, name) VALUES (%s, %s, %s)",
                    (m.service, m.version, m.name),
                )
                applied.append(m)
        conn.commit()
    return applied


def applied_migrations(settings_or_url: Settings | str, service: str | None = None) -> list[AppliedMigration]:
    """What ``schema_migrations`` records (empty when the table does not exist yet)."""
    with connect(settings_or_url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return []
        rows = conn.execute(
            "SELECT service, version, name, applied_at FROM schema_migrations"
            " WHERE %(s)s::text IS NULL OR service = %(s)s ORDER BY service, version",
            {"s": service},
        ).fetchall()
    return [AppliedMigration(*r) for r in rows]
