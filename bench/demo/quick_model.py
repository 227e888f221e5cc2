"""The demo's first model: the served head over the pretrained MiniLM, trained once and cached.

The catalog is split by title (leak-free, like ``tagloop train``) into three sides:

* ``original``: what the quick model is trained on (the same fit as ``tagloop train --quick``,
  over a tenth of the catalog);
* ``reserve``: listings the model never saw, streamed as "new" listings (their true labels
  drive the simulated shoppers and merchants, so feedback teaches something new);
* ``golden``: never trained on, never streamed; the gate's fixed holdout and the F1 of the summary.

The fitted version, its golden metrics and the embedding cache live under
``<state_dir>/demo/``; a later demo with the same catalog reuses them (minutes saved).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.trainer.embeddings import EmbeddingCache
from services.trainer.fast_job import run_fast_job
from services.trainer.job_input import FastJobInput, JobRecord, dataset_fingerprint, records_from_catalog
from services.trainer.labels import build_vocabulary, map_to_taxonomy
from services.trainer.scoring import golden_metrics
from services.trainer.split import group_split
from services.trainer.train import TrainConfig
from shared.catalog.records import Record
from shared.model_repository import version_dir, write_model_config
from shared.taxonomy import load_taxonomy

MAX_DEPTH = 3


@dataclass(frozen=True)
class DemoCatalog:
    original: list[JobRecord]
    reserve: list[Record]
    golden: list[JobRecord]
    texts: dict[str, str]
    truth: dict[str, set[str]]  # listing → its true tag ids (what simulated shoppers know)


def split_demo_catalog(records: Sequence[Record], golden_size: int = 1500, seed: int = 0) -> DemoCatalog:
    """Leak-free sides by title: 10 % original, 80 % reserve (streamed), 10 % golden (capped).

    A tenth of the labels makes a quick model that already tags well (micro-F1 ~0.92 on Flipkart)
    and still has something to learn from a few minutes of feedback: trained on a quarter or
    more, a few hundred listings' feedback moved nothing the gate could see (measured: candidate
    and champion equal on the recent holdout). It also keeps the first run's embedding work small.
    """
    split = group_split(records, val_frac=0.80, test_frac=0.10, seed=seed)
    original = records_from_catalog([records[i] for i in split.train], MAX_DEPTH)
    golden = records_from_catalog([records[i] for i in split.test[:golden_size]], MAX_DEPTH)
    reserve = [records[i] for i in split.val]
    truth = {r.listing_id: set(r.tag_ids or ()) for r in records_from_catalog(records, MAX_DEPTH)}
    return DemoCatalog(original, reserve, golden, {r.id: r.text for r in records}, truth)


@dataclass(frozen=True)
class QuickModel:
    version_dir: Path
    metrics: dict[str, Any]  # golden micro/macro F1 and how long the fit took
    cached: bool


def ensure_quick_model(
    records: Sequence[Record], catalog: DemoCatalog, cache_root: Path, taxonomy_dir: Path | None,
    model_name: str = "tag_model",
) -> QuickModel:
    """The cached quick model for this catalog, fitted (and scored on golden) when missing."""
    key = dataset_fingerprint(FastJobInput(catalog.original))[:12]
    home = cache_root / f"quick-{key}"
    marker = home / "metrics.json"
    if marker.exists():
        return QuickModel(version_dir(home / "models", model_name, 1), json.loads(marker.read_text()), True)
    shutil.rmtree(home, ignore_errors=True)  # a fit that was interrupted: start over
    started = time.monotonic()
    original_ids = {r.listing_id for r in catalog.original}
    vocab = build_vocabulary([r for r in records if r.id in original_ids], MAX_DEPTH, min_count=3,
                             min_attribute_count=3)
    if taxonomy_dir is not None and taxonomy_dir.exists():
        vocab = map_to_taxonomy(vocab, load_taxonomy(taxonomy_dir))
    embeddings = cache_root / "embeddings"
    fitted = run_fast_job(FastJobInput(catalog.original), home / "models", model_name, vocab=vocab,
                          config=TrainConfig(max_depth=MAX_DEPTH), cache_dir=embeddings, job_id="demo-quick")
    scored = golden_metrics(fitted.version_dir, catalog.golden, EmbeddingCache(embeddings))
    metrics = {"micro_f1": round(scored.micro_f1, 4), "macro_f1": round(scored.macro_f1, 4),
               "train_records": len(catalog.original), "golden_records": len(catalog.golden),
               "fit_seconds": round(time.monotonic() - started, 1)}
    marker.write_text(json.dumps(metrics))
    return QuickModel(fitted.version_dir, metrics, False)


def install_as_version_1(quick: QuickModel, repository: Path, model_name: str = "tag_model") -> Path:
    """A fresh model repository for this run whose only version is the quick model."""
    target = version_dir(repository, model_name, 1)
    shutil.rmtree(repository / model_name, ignore_errors=True)
    shutil.copytree(quick.version_dir, target)
    write_model_config(repository, model_name)
    return target
