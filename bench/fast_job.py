"""`tagloop bench trainer`: wall time and peak memory of the trainer's jobs on this CPU, and a version swap.

Five runs over the same catalog, each in its own process (so each peak RSS is its own), writing
versions 1-5 of a temporary repository:

1. ``quick``: ``tagloop train --quick`` -- pretrained MiniLM embeddings, head, thresholds,
   export with the ONNX encoder (version 1);
2. ``fast_cold``: a fast job from version 1 with ``flips`` weight-5 feedback labels that
   contradict the catalog; the embedding cache is empty for version 1's ONNX encoder;
3. ``fast_warm``: the same with other labels: every text is in the cache;
4. ``deep_full`` / 5. ``deep_lora``: deep jobs from version 1 on ``fast_cold``'s training set
   (same labels, split and seed), the whole encoder / a LoRA adapter fine-tuned for the same
   step cap (``TrainerSettings.deep_max_steps``, ``deep_batch_size``: ``TAGLOOP_TRAINER__DEEP_*``).

Keys of each run: ``wall_s`` (the run, from the child's start of work), ``cpu_s`` (user + system
CPU seconds of its process, all threads), ``peak_rss_mb``, ``timings`` (the job's own steps),
``micro_f1`` / ``macro_f1`` (the job's test split); deep runs add ``job`` (steps, adapter, losses,
rows seen...) and ``micro_gain_per_cpu_min`` / ``macro_gain_per_cpu_min``: their F1 minus
``fast_cold``'s, per CPU-minute of the deep run.

``swap`` (skipped when the bundled tritonserver is unavailable, or with ``swap=False``): Triton
serves version 1 to ``threads`` clients sending back-to-back requests of 4 texts; then the
``deep_<default adapter>`` version is loaded beside it (model ops' load), and clients move to it
while version 1 is unloaded. Per phase (``steady``, ``load_new``, ``unload_old``): ``requests``,
``failed`` and latency ``p50_ms`` / ``p99_ms``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

DEEP_STEPS = ("deep_full", "deep_lora")
_TEXTS = ["red cotton shirt for men", "steel water bottle 1 litre", "brown leather wallet", "kids sports shoes"]


def _config(data_dir: Path, limit: int | None) -> Any:
    from services.trainer.train import TrainConfig

    return TrainConfig(data=data_dir, taxonomy=data_dir / "shopify-taxonomy", limit=limit)


def _flips(config: Any, n: int, seed: int) -> list[Any]:
    """``n`` weight-5 labels on training listings that say the opposite of the catalog."""
    import numpy as np

    from services.trainer.job_input import TagLabel
    from services.trainer.train import prepare

    prep = prepare(config)
    rng = np.random.default_rng(seed)
    rows = rng.choice(prep.split.train, size=n)
    cols = rng.integers(0, len(prep.vocab), size=n)
    return [TagLabel(prep.records[r].id, prep.vocab[c].tag_id, int(prep.y[r, c] == 0), 5.0)
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True)]  # fmt: skip


def _step(step: str, data_dir: Path, limit: int | None, flips: int, repo: Path, cache: Path) -> dict[str, Any]:
    """One run, in this process (the child)."""
    from dataclasses import replace

    from services.trainer.deep_job import Adapter, DeepOptions, run_deep_job
    from services.trainer.fast_job import quick_train, run_fast_job
    from services.trainer.job_input import FastJobInput, records_from_catalog
    from services.trainer.train import prepare
    from shared.model_repository import version_dir
    from shared.settings import Settings

    config = _config(data_dir, limit)
    started = time.perf_counter()
    out: dict[str, Any]
    if step == "quick":
        result = quick_train(config, repo, "tag_model", cache_dir=cache)
        out = {"timings": result["timings"], "micro_f1": result["micro_f1"], "macro_f1": result["macro_f1"]}
    else:
        records = records_from_catalog(prepare(config).records, config.max_depth)
        job = FastJobInput(records, _flips(config, flips, seed=2 if step == "fast_warm" else 1))
        base = version_dir(repo, "tag_model", 1)
        if step in DEEP_STEPS:
            adapter: Adapter = "full" if step == "deep_full" else "lora"
            options = replace(DeepOptions.from_settings(Settings().trainer), adapter=adapter)
            res = run_deep_job(job, repo, "tag_model", base_version_dir=base, config=config, cache_dir=cache,
                               options=options)  # fmt: skip
        else:
            res = run_fast_job(job, repo, "tag_model", base_version_dir=base, config=config, cache_dir=cache)
        out = {"version": res.version, "timings": res.timings, "micro_f1": res.metrics["micro_f1"],
               "macro_f1": res.metrics["macro_f1"], "labels_applied": res.metrics["labels_applied"],
               "job": {k: v for k, v in res.metrics["job"].items() if k not in ("id", "kind")}}  # fmt: skip
    out["wall_s"] = round(time.perf_counter() - started, 1)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)
    out["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return out


def bench_fast_job(data_dir: Path, limit: int | None = None, flips: int = 500, swap: bool = True) -> dict[str, Any]:
    """Run the five steps in child processes, then the swap; timings, CPU, peak RSS, test metrics, swap figures."""
    from services.trainer.train import prepare
    from shared.settings import Settings

    prep = prepare(_config(data_dir, limit))
    trainer = Settings().trainer
    result: dict[str, Any] = {"n_listings": len(prep.records), "n_distinct_texts": len({r.text for r in prep.records}),
                              "n_tags": len(prep.vocab), "flips": flips, "cpus": os.cpu_count(),
                              "load_avg_start": os.getloadavg()[0],
                              "deep": {"max_steps": trainer.deep_max_steps, "batch_size": trainer.deep_batch_size,
                                       "default_adapter": trainer.deep_adapter}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        repo, cache = Path(tmp) / "repo", Path(tmp) / "cache"
        for step in ("quick", "fast_cold", "fast_warm", *DEEP_STEPS):
            args = [step, str(data_dir), str(limit or 0), str(flips), str(repo), str(cache)]
            proc = subprocess.run([sys.executable, "-m", "bench.fast_job", *args], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{step} failed: {proc.stderr[-2000:]}")
            result[step] = json.loads(proc.stdout.strip().splitlines()[-1])
        for step in DEEP_STEPS:
            run, minutes = result[step], result[step]["cpu_s"] / 60
            for key in ("micro_f1", "macro_f1"):
                gain = run[key] - result["fast_cold"][key]
                run[f"{key.removesuffix('_f1')}_gain_per_cpu_min"] = round(gain / minutes, 5)
        result["load_avg_end"] = os.getloadavg()[0]
        if swap:
            result["swap"] = bench_swap(repo, "tag_model", 1, result[f"deep_{trainer.deep_adapter}"]["version"],
                                        Path(tmp) / "triton")  # fmt: skip
    return result


def bench_swap(repo: Path, model: str, old: int, new: int, state_dir: Path, threads: int = 2) -> dict[str, Any]:
    """Requests, failures and latency of clients of ``old`` while ``new`` is loaded and ``old`` unloaded."""
    from services.trainer.model_ops import serve_versions
    from shared.devstack.triton import start_triton, stop_triton, tritonserver_available
    from shared.model_repository import CONFIG_FILE, render_tag_model_config
    from shared.triton_admin import TritonAdmin

    reason = tritonserver_available()
    if reason is not None:
        return {"skipped": reason}
    (repo / model / CONFIG_FILE).write_text(render_tag_model_config(model, [old]))
    endpoints = start_triton(state_dir, repo, [model], name="bench-swap")
    phases: dict[str, Any] = {}
    try:
        url = endpoints.http_url
        with TritonAdmin(url, timeout_s=300) as admin:
            with _Clients(url, model, old, threads) as clients:
                time.sleep(10.0)
                phases["steady"] = clients.phase()
                load_started = time.perf_counter()
                serve_versions(admin, model, [old, new], timeout_s=300)
                phases["load_new"] = {**clients.phase(), "load_s": round(time.perf_counter() - load_started, 1)}
            with _Clients(url, model, new, threads) as clients:
                time.sleep(2.0)  # the tagger has moved its traffic to the new version before the old one goes
                serve_versions(admin, model, [new], timeout_s=300)
                time.sleep(2.0)
                phases["unload_old"] = clients.phase()
    finally:
        stop_triton(state_dir, name="bench-swap")
    phases["failed_total"] = sum(p["failed"] for p in phases.values() if isinstance(p, dict))
    return phases


class _Clients:
    """``threads`` clients of one version sending requests back to back; :meth:`phase` reads and resets."""

    def __init__(self, url: str, model: str, version: int, threads: int) -> None:
        self.url, self.model, self.version = url, model, version
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._latencies: list[float] = []
        self._failed = 0
        self._errors: set[str] = set()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        from shared.triton_client import TritonTextClient

        client = TritonTextClient(self.url, self.model, timeout_s=120, model_version=str(self.version))
        try:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    client.infer(_TEXTS)
                    ok, error = True, ""
                except Exception as exc:  # every failure is counted
                    ok, error = False, str(exc)[:160]
                with self._lock:
                    if ok:
                        self._latencies.append(time.perf_counter() - started)
                    else:
                        self._failed += 1
                        self._errors.add(error)
        finally:
            client.close()

    def phase(self) -> dict[str, Any]:
        import numpy as np

        with self._lock:
            lat, failed, errors = np.array(self._latencies), self._failed, sorted(self._errors)[:3]
            self._latencies, self._failed, self._errors = [], 0, set()
        p50, p99 = (float(np.percentile(lat, q) * 1000) for q in (50, 99)) if lat.size else (0.0, 0.0)
        return {"requests": int(lat.size) + failed, "failed": failed, "p50_ms": round(p50, 1),
                "p99_ms": round(p99, 1), "errors": errors}  # fmt: skip

    def __enter__(self) -> _Clients:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(150)


if __name__ == "__main__":
    step, data, limit, n_flips, repo_dir, cache_dir = sys.argv[1:7]
    print(json.dumps(_step(step, Path(data), int(limit) or None, int(n_flips), Path(repo_dir), Path(cache_dir))))
