"""shared.db against the real Postgres: migrations are applied once, atomically, even when racing."""

from __future__ import annotations

import asyncio
import threading
import uuid

import psycopg
import pytest

from shared.db import (
    Migration,
    MigrationError,
    applied_migrations,
    apply_migrations,
    async_pool,
    connect,
    connect_async,
    validate_migrations,
)

pytestmark = pytest.mark.integration


def _service() -> str:
    # schema_migrations is shared by the session database: each test owns a service name.
    return f"svc_{uuid.uuid4().hex[:8]}"


def _migrations(service: str) -> list[Migration]:
    return [
        Migration(service, 1, "create_t", f"CREATE TABLE {service}_t (k text PRIMARY KEY, n int NOT NULL)"),
        # Several statements and a literal percent sign in one migration.
        Migration(
            service,
            2,
            "seed",
            f"INSERT INTO {service}_t VALUES ('a', 1); INSERT INTO {service}_t VALUES ('100%', 2);",
        ),
    ]


def test_validate_rejects_duplicates_and_sorts() -> None:
    a, b = Migration("s", 2, "b", "SELECT 1"), Migration("s", 1, "a", "SELECT 1")
    assert validate_migrations([a, b]) == [b, a]
    with pytest.raises(MigrationError):
        validate_migrations([a, Migration("s", 2, "other", "SELECT 1")])
    with pytest.raises(MigrationError):
        validate_migrations([Migration("s", 0, "zero", "SELECT 1")])


def test_apply_is_idempotent_and_recorded(database_url: str) -> None:
    svc = _service()
    first = apply_migrations(database_url, _migrations(svc))
    assert [m.version for m in first] == [1, 2]
    assert apply_migrations(database_url, _migrations(svc)) == []
    recorded = applied_migrations(database_url, svc)
    assert [(r.version, r.name) for r in recorded] == [(1, "create_t"), (2, "seed")]
    with connect(database_url) as conn:
        assert conn.execute(f"SELECT count(*) FROM {svc}_t").fetchone() == (2,)
    # A later migration appended to the history is applied alone.
    more = [*_migrations(svc), Migration(svc, 3, "add_col", f"ALTER TABLE {svc}_t ADD COLUMN x int")]
    assert [m.version for m in apply_migrations(database_url, more)] == [3]


def test_failed_migration_leaves_nothing(database_url: str) -> None:
    svc = _service()
    bad = [
        Migration(svc, 1, "ok", f"CREATE TABLE {svc}_ok (k int)"),
        Migration(svc, 2, "broken", f"CREATE TABLE {svc}_half (k int); SELECT no_such_function();"),
    ]
    with pytest.raises(psycopg.Error):
        apply_migrations(database_url, bad)
    assert [r.version for r in applied_migrations(database_url, svc)] == [1]
    with connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (f"{svc}_half",)).fetchone() == (None,)


def test_renamed_migration_is_refused(database_url: str) -> None:
    svc = _service()
    apply_migrations(database_url, _migrations(svc)[:1])
    with pytest.raises(MigrationError, match="recorded as"):
        apply_migrations(database_url, [Migration(svc, 1, "renamed", "SELECT 1")])


def test_racing_processes_apply_once(database_url: str) -> None:
    svc = _service()
    # Not idempotent on purpose: running it twice would fail with "already exists".
    migs = [Migration(svc, v, f"m{v}", f"CREATE TABLE {svc}_{v} (k int)") for v in range(1, 6)]
    results: list[list[Migration]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(apply_migrations(database_url, migs))
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(m.version for r in results for m in r) == [1, 2, 3, 4, 5]


def test_async_helpers(database_url: str) -> None:
    async def go() -> tuple[int, int]:
        async with await connect_async(database_url) as conn:
            one = await (await conn.execute("SELECT 1")).fetchone()
        pool = async_pool(database_url, max_size=2)
        await pool.open()
        try:
            async with pool.connection() as conn:
                two = await (await conn.execute("SELECT 2")).fetchone()
        finally:
            await pool.close()
        assert one is not None and two is not None
        return one[0], two[0]

    assert asyncio.run(go()) == (1, 2)
