"""``tagloop bench all``: every benchmark, one after the other, and one markdown report.

Each benchmark runs as its own ``tagloop bench <name> --json`` process (as a user would run it,
with nothing shared between them: one's memory or threads never weigh on the next), its JSON is
kept whole, and the report says on which machine, under which load and when they ran.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Cheapest first: a long one that fails late should not hide the others' figures.
BENCHMARKS = ("tagger", "learner", "feedback", "trainer", "tag-runtime", "train")


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, memory, load, Python, and the commit measured."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "load_avg": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "platform": platform.platform(), "commit": commit or None}


def run_one(name: str, timeout_s: float) -> dict[str, Any]:
    """``tagloop bench <name> --json`` in a process: its JSON, or why there is none."""
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        done = subprocess.run([sys.executable, "-m", "services.cli", "bench", name, "--json"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout_s:.0f} s", "seconds": round(timeout_s)}
    seconds = round(time.monotonic() - started, 1)
    base = {"seconds": seconds, "load_avg_before": round(load_before, 2)}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return base | {"ok": False, "error": f"exit {done.returncode}: {' / '.join(tail)}"}
    try:
        return base | {"ok": True, "result": json.loads(done.stdout[done.stdout.index("{"):])}
    except ValueError:
        return base | {"ok": False, "error": "no JSON on stdout"}


def run_all(names: Sequence[str] = BENCHMARKS, timeout_s: float = 3600) -> dict[str, Any]:
    """Every named benchmark, in order; the machine and the date with them."""
    report: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
                              "benchmarks": {}}
    for name in names:
        report["benchmarks"][name] = run_one(name, timeout_s)
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: a summary table, then each benchmark's JSON.

    >>> md = markdown({"date": "2026-11-29T12:00:00+00:00", "machine": {"cores": 2},
    ...                "benchmarks": {"x": {"ok": True, "seconds": 1.0, "result": {"items_per_s": 5}},
    ...                               "y": {"ok": False, "seconds": 0.5, "error": "exit 1: boom"}}})
    >>> "| x | ok | 1.0 |" in md and "| y | failed: exit 1: boom | 0.5 |" in md
    True
    """
    m = report["machine"]
    lines = [f"# tagloop benchmarks, {report['date']}", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()), "",
             "| benchmark | outcome | seconds |", "|---|---|---|"]
    for name, run in report["benchmarks"].items():
        outcome = "ok" if run["ok"] else f"failed: {run['error']}"
        lines.append(f"| {name} | {outcome} | {run['seconds']} |")
    for name, run in report["benchmarks"].items():
        if run["ok"]:
            lines += ["", f"## {name}", "", "```json", json.dumps(run["result"], indent=2, default=str), "```"]
    return "\n".join(lines) + "\n"
