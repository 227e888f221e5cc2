"""``tagloop trainer run | jobs`` (the trainer service) and ``tagloop eval loop`` (bench/loop.py)."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shared.settings import Settings

if TYPE_CHECKING:
    from services.trainer.jobs import JobRecord
    from services.trainer.metrics import TrainerMetrics
    from services.trainer.service import TickResult, TrainerService
    from services.trainer.triggers import Trigger

log = logging.getLogger("tagloop.trainer")


def load_trainer_data(data: Path, fmt: str, max_depth: int = 3, seed: int = 0):  # type: ignore[no-untyped-def]
    """The catalog split like ``tagloop train``: the test side is the golden holdout, the rest is trained on."""
    from services.trainer.job_input import records_from_catalog
    from services.trainer.service import TrainerData
    from services.trainer.split import group_split
    from shared.catalog.readers import load_records

    records = load_records(data, fmt)  # type: ignore[arg-type]
    split = group_split(records, val_frac=0.1, test_frac=0.2, seed=seed)
    original = records_from_catalog([records[i] for i in split.train + split.val], max_depth)
    golden = records_from_catalog([records[i] for i in split.test], max_depth)
    return TrainerData(original, golden, {r.id: r.text for r in records})


class ObservedTicks:
    """Runs :meth:`TrainerService.tick` and tells :class:`TrainerMetrics` what it did and what serves after it.

    A failing tick (Postgres or Triton away) is logged and counted, and the loop goes on: the
    job it ran is already marked failed, /readyz says why, and the next tick tries again.
    """

    def __init__(self, service: TrainerService, metrics: TrainerMetrics) -> None:
        from services.trainer import jobs

        self.service, self.metrics = service, metrics
        last = jobs.last_job(service.settings)
        self.seen_job_id = last.id if last is not None else 0  # jobs up to here are not this loop's to count

    def tick(self, force: Trigger | None = None, raise_errors: bool = False) -> TickResult | None:
        """One tick, observed; ``None`` when it failed (and ``raise_errors`` is false)."""
        t0 = time.monotonic()
        try:
            result = self.service.tick(force)
            self.metrics.observe_tick(result, time.monotonic() - t0, time.time())
            if result.job is not None:
                self.seen_job_id = max(self.seen_job_id, result.job.id)
            self.metrics.observe_serving(*self.serving())
            return result
        except Exception as exc:
            self.metrics.observe_tick_failure(exc, time.monotonic() - t0, self._failed_job())
            if raise_errors:
                raise
            log.exception("tick failed; retrying on the next tick")
            return None

    def serving(self) -> tuple[int | None, int | None, float]:
        """Champion version, canary version and the canary's share (what taggers route to it)."""
        from shared.model_registry import ModelStatus

        registry, model = self.service.registry, self.service.model
        champion = registry.champion(model)
        canaries = registry.list_versions(model, [ModelStatus.CANARY])
        canary = canaries[-1] if canaries else None
        share = float(canary.metrics.get("canary_share", self.service.settings.trainer.canary_share)) if canary else 0.0
        return (champion.version if champion else None), (canary.version if canary else None), share

    def _failed_job(self) -> JobRecord | None:
        """The job the failed tick started (start_job marked it failed), if it got that far."""
        from services.trainer import jobs

        try:
            last = jobs.last_job(self.service.settings)
        except Exception:  # the database that failed the tick may still be away
            return None
        if last is None or last.id <= self.seen_job_id or last.status != "failed":
            return None
        self.seen_job_id = last.id
        return last


def register(app: typer.Typer, eval_app: typer.Typer, bench_app: typer.Typer) -> None:
    trainer = typer.Typer(no_args_is_help=True, help="The trainer service: triggers, jobs, gate, canary.")
    app.add_typer(trainer, name="trainer")

    @trainer.command("run")
    def run_cmd(
        data: Annotated[Path | None, typer.Option(help="Labelled catalog: data dir (flipkart) or CSV/JSONL.")] = None,
        format: Annotated[str, typer.Option("--format", help="flipkart | csv | jsonl")] = "flipkart",
        once: Annotated[bool, typer.Option(help="One tick, then exit (cron, tests).")] = False,
        metrics_port: Annotated[int | None, typer.Option(
            help="Serve /metrics /healthz /readyz on TAGLOOP_OPS__HOST:PORT (default: TAGLOOP_OPS__TRAINER_PORT).",
        )] = None,
    ) -> None:
        """Judge canaries and run jobs when a trigger fires, until SIGTERM."""
        from services.trainer.metrics import TrainerMetrics
        from services.trainer.model_ops import ModelOps
        from services.trainer.service import TrainerService
        from shared.log_setup import configure_logging
        from shared.model_registry import ModelRegistry
        from shared.ops_http import OpsServer
        from shared.triton_admin import TritonAdmin

        settings = Settings()
        configure_logging(settings)
        ops = ModelOps(ModelRegistry(settings), TritonAdmin(settings.triton.http_url), settings.triton.tag_model,
                       drain_s=3 * settings.tagger.rollout_refresh_s)
        metrics = TrainerMetrics()
        port = metrics_port if metrics_port is not None else settings.ops.trainer_port
        # Up before the catalog loads: /healthz answers (and /readyz says "recovering") while it does.
        http = OpsServer(metrics.registry, settings.ops.host, port, ready=metrics.ready,
                         name="trainer-http").start() if port is not None else None
        if http is not None:
            log.info("metrics on %s/metrics", http.url)
        try:
            service = TrainerService(settings, load_trainer_data(data or settings.data_dir, format), ops)
            interrupted = service.recover()
            for job in interrupted:
                log.warning("job %s was interrupted (candidate %s): marked failed", job.id, job.candidate_version)
            metrics.observe_recovery(interrupted)
            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            observed = ObservedTicks(service, metrics)
            while not stop.is_set():
                result = observed.tick(raise_errors=once)
                if result is not None:
                    log.info("tick: %s candidate=%s", result.action, result.candidate)
                if once:
                    break
                stop.wait(settings.trainer.tick_interval_s)
        finally:
            if http is not None:
                http.stop()

    @trainer.command("jobs")
    def jobs_cmd(limit: int = 20, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
        """The latest jobs: trigger, dataset, candidate, gate decision, status."""
        from services.trainer import jobs

        rows = [j.to_dict() for j in jobs.list_jobs(Settings(), limit=limit)]
        if as_json:
            typer.echo(json.dumps(rows, indent=2, default=str))
            return
        for j in rows:
            typer.echo(f"{j['id']:>5} {j['status']:10} {j['trigger_kind']:16} candidate={j['candidate_version']} "
                       f"{j.get('error') or ''}")

