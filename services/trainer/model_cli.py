"""`tagloop model list | history | promote | rollback | shadow | canary`: ops over the model registry and Triton.

Thin: the work is :class:`services.trainer.model_ops.ModelOps`. Every command prints one line
(``list`` and ``history`` one per row, or JSON with ``--json``); an expected failure (unknown
version, a move the registry forbids, Triton or Postgres unreachable, registry not migrated)
prints one plain line on stderr and exits 1, without a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from shared.settings import Settings


@contextmanager
def _ops(needs_triton: bool) -> Iterator[Any]:
    """A :class:`ModelOps` from the settings; expected failures become one line and exit 1."""
    import psycopg

    from services.trainer.model_ops import ModelOps, OpError
    from shared.model_registry import ModelRegistry, RegistryError
    from shared.triton_admin import TritonAdmin, TritonAdminError

    settings = Settings()
    admin = None
    try:
        registry = ModelRegistry(settings)
        if not registry.is_migrated():
            raise OpError("the model registry is not migrated: run `tagloop db migrate`")
        if needs_triton:
            admin = TritonAdmin(settings.triton.http_url, timeout_s=300.0)
        drain_s = 2 * settings.tagger.rollout_refresh_s  # every tagger has re-read the registry by then
        yield ModelOps(registry, admin, settings.triton.tag_model, drain_s=drain_s)
    except (OpError, RegistryError, TritonAdminError) as exc:
        _fail(str(exc))
    except psycopg.OperationalError as exc:
        _fail(f"model registry unreachable: {_first_line(exc)}")
    except psycopg.Error as exc:  # e.g. a malformed TAGLOOP_DATABASE_URL
        _fail(f"model registry: {_first_line(exc)}")
    finally:
        if admin is not None:
            admin.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fail(message: str) -> None:
    typer.echo(_first_line(RuntimeError(message)), err=True)
    raise typer.Exit(1)


def _metric(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _version_line(v: Any) -> str:
    share = v.metrics.get("canary_share")
    extra = f" share={share:g}" if v.status == "canary" and isinstance(share, int | float) else ""
    created = f"{v.created_at:%Y-%m-%d %H:%M}" if v.created_at else "-"
    scores = f"micro_f1={_metric(v.metrics, 'micro_f1')} macro_f1={_metric(v.metrics, 'macro_f1')}"
    return f"{v.version:>5}  {v.status:<11} {scores}  job={v.training_job_id or '-'}  {created}{extra}"


def _version_dict(v: Any) -> dict[str, Any]:
    return {
        "version": v.version, "status": str(v.status), "training_job_id": v.training_job_id,
        "dataset_fingerprint": v.dataset_fingerprint, "micro_f1": v.metrics.get("micro_f1"),
        "macro_f1": v.metrics.get("macro_f1"), "canary_share": v.metrics.get("canary_share"),
        "created_at": v.created_at.isoformat() if v.created_at else None,
        "updated_at": v.updated_at.isoformat() if v.updated_at else None,
    }  # fmt: skip


def _run(needs_triton: bool, op: Callable[[Any], Any]) -> None:
    with _ops(needs_triton) as ops:
        typer.echo(op(ops).message)


def list_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Registered versions: status, headline metrics, training job, when."""
    with _ops(needs_triton=False) as ops:
        versions = ops.list_versions()
    if as_json:
        typer.echo(json.dumps([_version_dict(v) for v in versions], indent=2))
        return
    for v in versions:
        typer.echo(_version_line(v))
    if not versions:
        typer.echo("no versions registered")


def history_cmd(
    version: int, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Every status change of one version, oldest first, with its reason."""
    with _ops(needs_triton=False) as ops:
        changes = ops.history(version)
    rows = [{"changed_at": c.changed_at.isoformat(), "from": c.from_status and str(c.from_status),
             "to": str(c.to_status), "reason": c.reason} for c in changes]  # fmt: skip
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        typer.echo(f"{r['changed_at'][:19]}  {r['from'] or '(new)'} -> {r['to']}  {r['reason']}")


def promote_cmd(version: int) -> None:
    """Candidate, shadow or canary -> champion; the previous champion stays loaded for rollback."""
    _run(True, lambda ops: ops.promote(version))


def rollback_cmd() -> None:
    """Champion -> rolled-back; the previous champion is champion again."""
    _run(True, lambda ops: ops.rollback())


def shadow_cmd(version: int) -> None:
    """Load the version beside the champion; both tag, only the champion's tags are published."""
    _run(True, lambda ops: ops.shadow(version))


def canary_cmd(
    version: int,
    share: Annotated[float | None, typer.Option(help="Share of listings it tags (default: trainer.canary_share).")] = (
        None
    ),
) -> None:
    """Load the version beside the champion; a share of listings (by id hash) is tagged by it."""
    chosen = share if share is not None else Settings().trainer.canary_share
    _run(True, lambda ops: ops.canary(version, chosen))


COMMANDS: dict[str, Callable[..., None]] = {
    "list": list_cmd, "history": history_cmd, "promote": promote_cmd, "rollback": rollback_cmd,
    "shadow": shadow_cmd, "canary": canary_cmd,
}  # fmt: skip


def register(app: typer.Typer, eval_app: typer.Typer, bench_app: typer.Typer) -> None:
    """Attach ``tagloop model``."""
    model_app = typer.Typer(no_args_is_help=True, help="Tag model versions: registry status and what Triton serves.")
    for name, command in COMMANDS.items():
        model_app.command(name)(command)
    app.add_typer(model_app, name="model")
