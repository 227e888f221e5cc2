"""`tagloop` commands of the feedback service.

* ``tagloop feedback run``: the worker (batch engine by default; migrates first).
* ``tagloop feedback migrate``: the feedback schema only.
* ``tagloop feedback verify [--json]``: count tables vs a recount from the archive.
* ``tagloop feedback prune [--ids-older-than-days 30]``: empty the pre-migration-7 event-id table.
* ``tagloop bench feedback --json``: events/s counted exactly once, and where the time goes.
* ``tagloop db migrate [--json]``: every service's migrations (``services/*/migrations.py``).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated

import typer

from shared.cli_output import print_result
from shared.db import Migration


def all_migrations() -> list[Migration]:
    """Every ``MIGRATIONS`` list found in ``services.<name>.migrations``."""
    import services

    found: list[Migration] = []
    for info in pkgutil.iter_modules(services.__path__):
        if not info.ispkg:
            continue
        try:
            module = importlib.import_module(f"services.{info.name}.migrations")
        except ModuleNotFoundError as exc:
            if exc.name != f"services.{info.name}.migrations":
                raise
            continue
        found.extend(getattr(module, "MIGRATIONS", []))
    return found


def run_cmd(
    group: Annotated[str, typer.Option(help="Consumer group (faust app id).")] = "tagloop-feedback",
    batch_size: Annotated[int, typer.Option(help="Max events per micro-batch/transaction.")] = 10_000,
    within: Annotated[float, typer.Option(help="Max seconds to fill a micro-batch.")] = 0.5,
    web: Annotated[bool, typer.Option(help="Run faust's web server on a free loopback port.")] = False,
    engine: Annotated[
        str, typer.Option(help="batch (aiokafka batches, the fastest) or faust (the faust app, same write path).")
    ] = "batch",
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT.")] = None,
    writers: Annotated[int, typer.Option(help="Batch engine: concurrent transactions per poll.")] = 1,
    counters: Annotated[
        str, typer.Option(help="inline (counters in each batch's transaction) or rollup (rolled up from the archive).")
    ] = "inline",
) -> None:
    """Run the feedback worker until SIGTERM/SIGINT."""
    from services.feedback.app import FeedbackConfig
    from services.feedback.main import run_worker
    from shared.preflight import require_kafka, require_postgres
    from shared.settings import Settings

    if engine not in ("faust", "batch"):
        raise typer.BadParameter("engine must be faust or batch")
    if counters not in ("rollup", "inline"):
        raise typer.BadParameter("counters must be rollup or inline")
    config = FeedbackConfig(
        group=group, batch_size=batch_size, within_s=within, web=web, metrics_port=metrics_port, writers=writers,
        counters="rollup" if counters == "rollup" else "inline",
    )
    settings = Settings()
    # The worker retries a missing broker forever: say once, plainly, what is not there.
    require_kafka(settings.kafka)
    require_postgres(settings.database_url)
    run_worker(settings, config, engine=engine)


def migrate_cmd(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Apply the feedback schema."""
    from services.feedback.app import migrate
    from shared.settings import Settings

    print_result({"applied": migrate(Settings())}, as_json)


def verify_cmd(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Compare every count table with a recount from the archive; exit 1 on any difference."""
    from services.feedback.repository import recount_mismatches
    from shared.settings import Settings

    mismatches = recount_mismatches(Settings().database_url)
    exact = set(mismatches.values()) <= {0}
    print_result({"exact": exact, "mismatched_rows": mismatches}, as_json)
    if not exact:
        raise typer.Exit(1)


def prune_cmd(
    ids_older_than_days: Annotated[
        float, typer.Option(help="Forget event ids older than this (keep it above the feedback topic's retention).")
    ] = 30.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Delete old event ids from the id table of workers before migration 7 (the guard is now the archive's key)."""
    from datetime import UTC, datetime, timedelta

    from services.feedback.repository import prune_event_ids
    from shared.settings import Settings

    cutoff = datetime.now(UTC) - timedelta(days=ids_older_than_days)
    deleted = prune_event_ids(Settings().database_url, cutoff)
    print_result({"cutoff": cutoff.isoformat(), "event_ids_deleted": deleted}, as_json)


def db_migrate_cmd(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Apply every service's migrations (idempotent; safe to run concurrently)."""
    from shared.db import apply_migrations
    from shared.settings import Settings

    applied = apply_migrations(Settings(), all_migrations())
    print_result({"applied": [f"{m.service}:{m.version}:{m.name}" for m in applied]}, as_json)


def register(app: typer.Typer, eval_app: typer.Typer, bench_app: typer.Typer) -> None:
    """Attach this service's commands to the top-level `tagloop` app and its `eval`/`bench` groups."""
    feedback_app = typer.Typer(no_args_is_help=True, help="Feedback aggregation into Postgres.")
    feedback_app.command("run")(run_cmd)
    feedback_app.command("migrate")(migrate_cmd)
    feedback_app.command("verify")(verify_cmd)
    feedback_app.command("prune")(prune_cmd)
    app.add_typer(feedback_app, name="feedback")
    # `tagloop db` belongs to no single service; registered here until the top-level CLI owns it.
    if not any(g.name == "db" for g in app.registered_groups):
        db_app = typer.Typer(no_args_is_help=True, help="Database schema of all services.")
        db_app.command("migrate")(db_migrate_cmd)
        app.add_typer(db_app, name="db")
