"""`tagloop db migrate`: every service's schema, the shared model registry, and its first champion.

The top-level CLI owns ``tagloop db`` (registered before the services, so the feedback CLI's
fallback registration of the same group steps aside).

``migrate`` is the one-shot ops step that brings storage up to what the code expects:

1. every service's migrations (``services/*/migrations.py``) and the model registry's
   (:data:`shared.model_registry.MIGRATIONS`), idempotent and safe to run concurrently;
2. every version of the tag model in the repository is made portable
   (:func:`shared.tagmodel.version_files.make_portable`: older exports' ``model.py`` imported the
   trainer and named the exporting machine's paths);
3. when the registry knows no version of the tag model, the newest version in the repository
   (the shipped version 1) is registered as champion, so the tagger keeps serving it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from shared.settings import Settings


def migrate_all(settings: Settings) -> dict[str, Any]:
    """Steps 1-3 above; returns what each did."""
    from services.feedback.cli import all_migrations
    from shared import model_registry
    from shared.db import apply_migrations
    from shared.model_repository import version_dir, versions
    from shared.tagmodel.version_files import make_portable

    applied = apply_migrations(settings, [*all_migrations(), *model_registry.MIGRATIONS])
    repo, name = settings.triton_model_repository, settings.triton.tag_model
    portable: dict[str, list[str]] = {}
    for v in versions(repo, name):
        try:
            changed = make_portable(version_dir(repo, name, v))
        except OSError as exc:  # a read-only repository: report, the registry step still runs
            changed = [f"not rewritten: {exc}"]
        if changed:
            portable[str(v)] = changed
    seeded = model_registry.ModelRegistry(settings).seed_champion(repo, name)
    return {
        "applied": [f"{m.service}:{m.version}:{m.name}" for m in applied],
        "made_portable": portable,
        "seeded_champion": f"{name}:{seeded.version}" if seeded else None,
    }


def migrate_cmd(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Apply every schema (idempotent), make model versions portable, seed the registry's champion."""
    result = migrate_all(Settings())
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    for key, value in result.items():
        typer.echo(f"{key:32} {value}")


def register(app: typer.Typer, eval_app: typer.Typer, bench_app: typer.Typer) -> None:
    """Attach ``tagloop db``."""
    db_app = typer.Typer(no_args_is_help=True, help="Database schema of all services and the model registry.")
    db_app.command("migrate")(migrate_cmd)
    app.add_typer(db_app, name="db")
