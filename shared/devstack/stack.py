"""``tagloop dev up|down|status``: the whole local stack on loopback, free ports.

Pieces: the tansu broker, Postgres (configured server if reachable, else embedded)
and Triton (bundled tritonserver on ``triton_models/``). The addresses go to
``<state_dir>/stack.json``, which :class:`shared.settings.Settings` reads, so every
other command and the tests find them without flags.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from shared.devstack import broker, postgres
from shared.devstack.process import ManagedProcess
from shared.model_repository import latest_version
from shared.settings import Settings, stack_file

ENCODER_MODEL = "minilm_encoder"


@dataclass
class StackInfo:
    """Where the pieces of a running local stack listen."""

    state_dir: Path
    bootstrap_servers: str
    database_url: str
    postgres_mode: str  # "external" (configured server) or "embedded"
    triton_http_url: str | None = None
    triton_grpc_url: str | None = None
    triton_metrics_url: str | None = None
    triton_models: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    def settings_overrides(self) -> dict[str, Any]:
        """What :class:`Settings` should read from the stack file."""
        out: dict[str, Any] = {
            "kafka": {"bootstrap_servers": self.bootstrap_servers},
            "database_url": self.database_url,
        }
        if self.triton_http_url:
            out["triton"] = {"http_url": self.triton_http_url, "grpc_url": self.triton_grpc_url}
        return out

    def apply(self, settings: Settings) -> Settings:
        """A copy of ``settings`` pointing at this stack."""
        triton = settings.triton
        if self.triton_http_url and self.triton_grpc_url:
            triton = triton.model_copy(update={"http_url": self.triton_http_url, "grpc_url": self.triton_grpc_url})
        return settings.model_copy(
            update={
                "kafka": settings.kafka.model_copy(update={"bootstrap_servers": self.bootstrap_servers}),
                "database_url": self.database_url,
                "triton": triton,
                "state_dir": self.state_dir,
            }
        )

    def write(self) -> Path:
        path = stack_file(self.state_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        path.write_text(json.dumps({"settings": self.settings_overrides(), "info": info}, indent=2))
        return path


def ensure_database(server_url: str, dbname: str) -> str:
    """Create ``dbname`` on the server if missing; returns a URL to it."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return str(psycopg.conninfo.make_conninfo(server_url, dbname=dbname))


def drop_database(server_url: str, dbname: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def drop_run_database(database_url: str, dbname: str) -> None:
    """Drop a run's own database (the demo's, an experiment's) on the server ``database_url`` points at.

    Quiet where the server is gone: an embedded server stopped by :func:`down` took its data along.
    """
    server = psycopg.conninfo.make_conninfo(database_url, dbname="postgres")
    with contextlib.suppress(psycopg.Error):
        drop_database(server, dbname)


def make_versions_portable(repository: Path, tag_model: str) -> None:
    """Rewrite what older exports left in the tag model's versions (:func:`make_portable`) before Triton loads them."""
    from shared.model_repository import version_dir, versions
    from shared.tagmodel.version_files import make_portable

    for v in versions(repository, tag_model):
        make_portable(version_dir(repository, tag_model, v))


def models_to_load(repository: Path, tag_model: str) -> list[str]:
    """The encoder always; the trained tag model when a version of it exists."""
    return [ENCODER_MODEL] + ([tag_model] if latest_version(repository, tag_model) is not None else [])


def up(
    settings: Settings,
    *,
    database: str = "tagloop",
    with_triton: bool = True,
    triton_models: Sequence[str] | None = None,
) -> StackInfo:
    """Start every piece that is not running yet and write the stack file.

    Raises :class:`StackError` naming the piece (and its log) that could not start;
    pieces already started by this call are stopped again.
    """
    state_dir = settings.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    started: list[str] = []
    try:
        bootstrap = broker.start_broker(state_dir)
        started.append(broker.NAME)

        if postgres.postgres_ready(settings.database_url):
            server_url, mode = settings.database_url, "external"
        else:
            server_url, mode = postgres.start_embedded_postgres(state_dir), "embedded"
            started.append(postgres.NAME)
        database_url = ensure_database(server_url, database)

        info = StackInfo(state_dir, bootstrap, database_url, mode)
        if with_triton:
            from shared.devstack.triton import start_triton

            repo = settings.triton_model_repository.resolve()
            models = list(triton_models or models_to_load(repo, settings.triton.tag_model))
            if settings.triton.tag_model in models:
                make_versions_portable(repo, settings.triton.tag_model)
            endpoints = start_triton(state_dir, repo, models)
            started.append("triton")
            info.triton_http_url = endpoints.http_url
            info.triton_grpc_url = endpoints.grpc_url
            info.triton_metrics_url = endpoints.metrics_url
            info.triton_models = models
    except Exception:
        for name in reversed(started):
            ManagedProcess(name, state_dir).stop()
        raise
    info.write()
    return info


PIECES = ("triton", postgres.NAME, broker.NAME)


def down(state_dir: Path) -> dict[str, bool]:
    """Stop only the processes started under ``state_dir`` (by pid file): the services that run
    beside the stack first (e.g. ``tagloop demo --keep``), then the stack; remove the stack file."""
    services = sorted(p.stem for p in state_dir.glob("*.pid") if p.stem not in PIECES)
    result = {name: ManagedProcess(name, state_dir).stop() for name in [*services, *PIECES]}
    stack_file(state_dir).unlink(missing_ok=True)
    return result


def status(state_dir: Path) -> dict[str, Any]:
    """What runs, by pid file, plus the addresses from the stack file."""
    path = stack_file(state_dir)
    info = json.loads(path.read_text())["info"] if path.exists() else {}
    pieces = {}
    for name in PIECES:
        proc = ManagedProcess(name, state_dir)
        pieces[name] = {"pid": proc.pid(), "running": proc.running(), "log": str(proc.log_file)}
    if info.get("postgres_mode") == "external":
        pieces[postgres.NAME]["running"] = postgres.postgres_ready(info["database_url"])
        pieces[postgres.NAME]["external"] = True
    return {"state_dir": str(state_dir), "info": info, "pieces": pieces}

