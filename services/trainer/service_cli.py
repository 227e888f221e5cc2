"""``tagloop trainer run | jobs`` (the trainer service) and ``tagloop eval loop`` (bench/loop.py)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from shared.settings import Settings

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


def register(app: typer.Typer, eval_app: typer.Typer, bench_app: typer.Typer) -> None:
    trainer = typer.Typer(no_args_is_help=True, help="The trainer service: triggers, jobs, gate, canary.")
    app.add_typer(trainer, name="trainer")

    @trainer.command("run")
    def run_cmd(
        data: Annotated[Path | None, typer.Option(help="Labelled catalog: data dir (flipkart) or CSV/JSONL.")] = None,
        format: Annotated[str, typer.Option("--format", help="flipkart | csv | jsonl")] = "flipkart",
        once: Annotated[bool, typer.Option(help="One tick, then exit (cron, tests).")] = False,
    ) -> None:
        """Judge canaries and run jobs when a trigger fires, until SIGTERM."""
        from services.trainer.model_ops import ModelOps
        from services.trainer.service import TrainerService
        from shared.model_registry import ModelRegistry
        from shared.triton_admin import TritonAdmin

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        settings = Settings()
        ops = ModelOps(ModelRegistry(settings), TritonAdmin(settings.triton.http_url), settings.triton.tag_model,
                       drain_s=3 * settings.tagger.rollout_refresh_s)

        service = TrainerService(settings, load_trainer_data(data or settings.data_dir, format), ops)
        for job in service.recover():
            log.warning("job %s was interrupted (candidate %s): marked failed", job.id, job.candidate_version)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.is_set():
            result = service.tick()
            log.info("tick: %s candidate=%s", result.action, result.candidate)
            if once:
                break
            stop.wait(settings.trainer.tick_interval_s)

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

    @eval_app.command("loop")
    def eval_loop_cmd(
        data: Annotated[Path | None, typer.Option(help="Labelled catalog: data dir (flipkart) or CSV/JSONL.")] = None,
        format: Annotated[str, typer.Option("--format", help="flipkart | csv | jsonl")] = "flipkart",
        cycles: int = 3,
        listings_per_cycle: int = 600,
        canary_listings: int = 400,
        limit: Annotated[int | None, typer.Option(help="Use only the first N listings.")] = None,
        seed: int = 0,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """The whole loop on the real services: F1 per cycle, promotions, a rejected bad candidate, a rollback."""
        from bench.loop import LoopConfig, run_loop

        settings = Settings()
        result = run_loop(LoopConfig(data or settings.data_dir, format, cycles, listings_per_cycle, canary_listings,
                                     limit=limit, seed=seed), settings)
        if as_json:
            typer.echo(json.dumps(result, indent=2, default=str))
            return
        for key, value in result.items():
            if key != "details":
                typer.echo(f"{key:32} {value}")
