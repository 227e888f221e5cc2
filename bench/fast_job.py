"""`tagloop bench trainer`: wall time and peak memory of the trainer's fast path on this CPU.

Three runs over the same catalog, each in its own process (so each peak RSS is its own):

1. ``quick``: ``tagloop train --quick`` -- pretrained MiniLM embeddings, head, thresholds,
   export with the ONNX encoder (version 1 of a temporary repository);
2. ``fast_cold``: a fast job from version 1 with ``flips`` weighted feedback labels that
   contradict the catalog; the embedding cache is empty for version 1's ONNX encoder;
3. ``fast_warm``: the same with other labels: every text is in the cache.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


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
    from services.trainer.fast_job import quick_train, run_fast_job
    from services.trainer.job_input import FastJobInput, records_from_catalog
    from services.trainer.train import prepare
    from shared.model_repository import version_dir

    config = _config(data_dir, limit)
    started = time.perf_counter()
    if step == "quick":
        result = quick_train(config, repo, "tag_model", cache_dir=cache)
        out = {"timings": result["timings"], "micro_f1": result["micro_f1"], "macro_f1": result["macro_f1"]}
    else:
        records = records_from_catalog(prepare(config).records, config.max_depth)
        labels = _flips(config, flips, seed=1 if step == "fast_cold" else 2)
        job = FastJobInput(records, labels)
        res = run_fast_job(job, repo, "tag_model", base_version_dir=version_dir(repo, "tag_model", 1),
                           config=config, cache_dir=cache)  # fmt: skip
        out = {"timings": res.timings, "micro_f1": res.metrics["micro_f1"], "macro_f1": res.metrics["macro_f1"],
               "labels_applied": res.metrics["labels_applied"], **{k: res.metrics["job"][k] for k in
               ("embeddings_cached", "embeddings_computed")}}  # fmt: skip
    out["wall_s"] = round(time.perf_counter() - started, 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def bench_fast_job(data_dir: Path, limit: int | None = None, flips: int = 500) -> dict[str, Any]:
    """Run the three steps in child processes; their timings, peak RSS and test metrics."""
    from services.trainer.train import prepare

    prep = prepare(_config(data_dir, limit))
    result: dict[str, Any] = {"n_listings": len(prep.records), "n_distinct_texts": len({r.text for r in prep.records}),
                              "n_tags": len(prep.vocab), "flips": flips, "cpus": os.cpu_count()}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        repo, cache = Path(tmp) / "repo", Path(tmp) / "cache"
        for step in ("quick", "fast_cold", "fast_warm"):
            args = [step, str(data_dir), str(limit or 0), str(flips), str(repo), str(cache)]
            proc = subprocess.run([sys.executable, "-m", "bench.fast_job", *args], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{step} failed: {proc.stderr[-2000:]}")
            result[step] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    step, data, limit, n_flips, repo_dir, cache_dir = sys.argv[1:7]
    print(json.dumps(_step(step, Path(data), int(limit) or None, int(n_flips), Path(repo_dir), Path(cache_dir))))
