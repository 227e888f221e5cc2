"""The commands bench/ adds to ``tagloop``: ``bench ...``, ``eval loop`` and ``demo``.

bench/ uses the services, never the reverse: ``services/cli.py`` finds :func:`register` through
the ``tagloop.commands`` entry-point group (pyproject.toml), so no module under services/ or
shared/ imports bench/ (tests/unit/test_import_layers.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from services.trainer.cli import DEFAULT_RUN
from shared.cli_output import print_result


def bench_tagger_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    n: Annotated[int, typer.Option("--n", help="Real listings in the timed burst (and in the latency run).")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Tagger micro-batch size (the bare run uses the same).")] = 32,
    max_inflight: Annotated[int, typer.Option(help="Batches in flight to Triton.")] = 4,
) -> None:
    """Pipeline vs bare items/s (ratio), and end-to-end p50/p99 at half the maximum rate."""
    from bench.tagger import run_bench

    result = run_bench(n=n, batch_size=batch_size, max_inflight=max_inflight)
    print_result(result, as_json)


def bench_feedback_cmd(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    events: Annotated[int, typer.Option(help="Feedback events through the real worker (per engine).")] = 60_000,
    batch_size: Annotated[int, typer.Option(help="Worker micro-batch size.")] = 10_000,
    stage_events: Annotated[int, typer.Option(help="Events for the per-stage timings.")] = 30_000,
    engines: Annotated[
        str,
        typer.Option(
            help="Comma-separated: faust, batch, batch:N (N concurrent writers), each optionally +rollup or"
            " +inline (how counters are written), or old- (the --baseline revision's worker)."
        ),
    ] = "old-batch,batch,batch+rollup,faust",
    loads: Annotated[str, typer.Option(help="Comma-separated load shapes: uniform, skewed, replay.")] = (
        "uniform,skewed,replay"
    ),
    baseline: Annotated[
        str | None, typer.Option(help="Git revision whose worker the old- engines run (e.g. the previous commit).")
    ] = None,
) -> None:
    """Feedback events/s into Postgres exactly once, old and new write path (private broker, fresh databases)."""
    from bench.feedback import run
    from bench.feedback_loads import LOADS

    chosen = [e.strip() for e in engines.split(",") if e.strip()]
    kinds = {e.removeprefix("old-").partition("+")[0].partition(":")[0] for e in chosen}
    if not chosen or not kinds <= {"batch", "faust"}:
        raise typer.BadParameter("engines: [old-]faust|batch|batch:N[+inline]")
    shapes = [x.strip() for x in loads.split(",") if x.strip()]
    if not shapes or not set(shapes) <= set(LOADS):
        raise typer.BadParameter(f"loads: {', '.join(LOADS)}")
    result = run(
        n_events=events, batch_size=batch_size, stage_events=stage_events, engines=chosen, loads=shapes,
        baseline=baseline,
    )
    print_result(result, as_json)


def bench_learner_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    rate: Annotated[int, typer.Option(help="Input events per second.")] = 10_000,
    seconds: Annotated[float, typer.Option(help="How long to produce at that rate.")] = 20.0,
    model: Annotated[str, typer.Option(help="lr or fm.")] = "lr",
) -> None:
    """Learner updates/s, and its lag behind the feedback topic at a fixed input rate."""
    from bench.learner import run_bench

    print_result(run_bench(rate=rate, seconds=seconds, kind=model), as_json)  # type: ignore[arg-type]


def bench_train_cmd(
    limit: Annotated[int | None, typer.Option(help="First N listings (default: all 20k).")] = None,
    batch_size: int = 32,
    max_length: int = 64,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Time one training epoch over the Flipkart listings on CPU; peak memory."""
    from bench.train import bench_train_epoch
    from shared.settings import Settings

    print_result(bench_train_epoch(Settings().data_dir, limit, batch_size, max_length), json_out)

def bench_fast_job_cmd(
    limit: Annotated[int | None, typer.Option(help="First N listings (default: all 20k).")] = None,
    flips: Annotated[int, typer.Option(help="Weighted feedback labels that contradict the catalog.")] = 500,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Wall time and peak RSS of `train --quick`, fast jobs (cold, warm cache), deep jobs (full, LoRA); a swap."""
    from bench.fast_job import bench_fast_job
    from shared.settings import Settings

    print_result(bench_fast_job(Settings().data_dir, limit, flips), json_out)

def bench_runtime_cmd(
    run: Annotated[Path, typer.Option("--checkpoint", "--run", help="Run directory of `tagloop train`.")] = DEFAULT_RUN,
    data: Annotated[Path | None, typer.Option(help="Without a trained run: catalog of the quick model.")] = None,
    format: Annotated[str, typer.Option("--format", help="flipkart | csv | jsonl")] = "flipkart",
    limit: Annotated[int | None, typer.Option(help="Without a trained run: first N listings.")] = 4000,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Serving variants side by side (int8 vs float encoder, max_length, length buckets): items/s and F1
    on the model's test split; with a trained run, ONNX vs TorchScript too."""
    from bench.tag_runtime import run_bench
    from shared.settings import Settings

    settings = Settings()
    result = run_bench(run, data or settings.data_dir, format, limit, cache_dir=settings.state_dir / "embeddings")
    print_result(result, json_out)


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
    from shared.settings import Settings

    settings = Settings()
    result = run_loop(LoopConfig(data or settings.data_dir, format, cycles, listings_per_cycle, canary_listings,
                                 limit=limit, seed=seed), settings)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    for key, value in result.items():
        if key != "details":
            typer.echo(f"{key:32} {value}")


def bench_all(
    only: str | None = typer.Option(None, help="Comma-separated benchmarks (default: all of them)"),
    report: Path = typer.Option(Path("bench/results/all.md"), help="Where the markdown report goes"),
    timeout: float = typer.Option(3600.0, help="Seconds each benchmark may take"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every benchmark, one process each; a markdown report with the figures, the machine and the date."""
    from bench.all import BENCHMARKS, markdown, run_all

    names = [n.strip() for n in only.split(",")] if only else list(BENCHMARKS)
    result = run_all(names, timeout_s=timeout)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(markdown(result))
    typer.echo(json.dumps(result, indent=2, default=str) if as_json else f"report: {report}")
    raise typer.Exit(0 if all(r["ok"] for r in result["benchmarks"].values()) else 1)


def demo(
    listings: int = typer.Option(3000, "--listings", help="Stream at most N new listings"),
    rate: float = typer.Option(6.0, "--rate", help="New listings per second"),
    duration: float = typer.Option(900.0, "--duration", help="Stop after this many seconds"),
    keep: bool = typer.Option(False, help="Leave the stack and services running; print their URLs"),
    data: Path | None = typer.Option(None, help="Labelled catalog: data dir (flipkart) or CSV/JSONL"),
    format: str = typer.Option("flipkart", "--format", help="flipkart | csv | jsonl"),
) -> None:
    """The whole loop: quick model → tagging through Triton → feedback → affinity → a trainer cycle → promotion."""
    from bench.demo.run import DemoOptions, run_demo

    raise typer.Exit(run_demo(DemoOptions(listings=listings, rate_per_s=rate, duration_s=duration, keep=keep,
                                          data=data, format=format)))


def register(app: typer.Typer, eval_app: typer.Typer, bench_app: typer.Typer) -> None:
    """Attach ``tagloop bench ...``, ``tagloop eval loop`` and ``tagloop demo`` (the ``tagloop.commands`` hook)."""
    bench_app.command("tagger")(bench_tagger_cmd)
    bench_app.command("feedback")(bench_feedback_cmd)
    bench_app.command("learner")(bench_learner_cmd)
    bench_app.command("train")(bench_train_cmd)
    bench_app.command("trainer")(bench_fast_job_cmd)
    bench_app.command("tag-runtime")(bench_runtime_cmd)
    bench_app.command("all")(bench_all)
    eval_app.command("loop")(eval_loop_cmd)
    app.command("demo")(demo)
