"""``tagloop bench tagger --json``: the tagger pipeline against the bare model (code in bench/tagger.py)."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def bench_tagger_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    n: Annotated[int, typer.Option("--n", help="Real listings in the timed burst (and in the latency run).")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Tagger micro-batch size (the bare run uses the same).")] = 32,
    max_inflight: Annotated[int, typer.Option(help="Batches in flight to Triton.")] = 4,
) -> None:
    """Pipeline vs bare items/s (ratio), and end-to-end p50/p99 at half the maximum rate."""
    from bench.tagger import run_bench

    result = run_bench(n=n, batch_size=batch_size, max_inflight=max_inflight)
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    for key, value in result.items():
        typer.echo(f"{key:32} {value}")


def register(app: typer.Typer, eval_app: typer.Typer, bench_app: typer.Typer) -> None:
    """Attach ``bench tagger`` to the ``bench`` group."""
    bench_app.command("tagger")(bench_tagger_cmd)
