"""``tagloop bench all``: a benchmark that fails is reported with why, next to the machine and date."""

from __future__ import annotations

from bench.all import markdown, run_all


def test_a_failing_benchmark_is_reported_not_hidden() -> None:
    report = run_all(["no-such-benchmark"], timeout_s=120)
    run = report["benchmarks"]["no-such-benchmark"]
    assert run["ok"] is False and run["error"].startswith("exit 2")  # typer: no such command
    assert report["machine"]["cores"] and report["date"].startswith("20")
    md = markdown(report)
    assert "| no-such-benchmark | failed: exit 2" in md and "cores" in md
