"""Serving variants of one exported version, side by side: items/s and F1 on the same test split.

What ``tagloop bench tag-runtime`` runs (issue 11, §5). Every variant runs the version's own
runtime (:class:`~shared.tagmodel.runtime.TagModelRuntime`, the class Triton's backend runs) over
the same test texts, interleaved repeat by repeat so a change in machine load hits all alike:

* **precision** -- the exported float ONNX encoder, or its dynamic int8 quantization
  (:func:`services.trainer.export.write_int8_onnx`; the version's own ``model.int8.onnx`` where
  it has one);
* **max_length** -- the served truncation (the head was fitted at the card's length);
* **bucketed** -- batches of similar-length texts (the runtime's way) or arrival order.

Each variant also reports ``batch_dependent_listings``: the share of listings whose tag set
differs when each is encoded alone instead of in its batch. Dynamic int8 quantizes activations
with one scale per batch, so a listing's tags depend on its neighbours there; a float encoder's
do not (up to rounding).

F1 is the served decision (:func:`shared.tagmodel.decide.decide`) scored like ``tagloop eval
tags`` (:func:`services.trainer.evaluate.tag_metrics`). Speed and F1 are given against the float
encoder at the card's length (``reference``); ``adopt`` is the fastest length-bucketed variant
(the runtime always buckets) that costs at most :data:`MAX_F1_COST_POINTS` and whose tags do not
depend on the batch (:data:`MAX_BATCH_DEPENDENT`); ``where_the_time_goes``
splits the served variant's time into tokenizer, encoder and head.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.trainer.evaluate import tag_metrics
from services.trainer.export import write_int8_onnx
from shared.tagmodel.card import load_model_card
from shared.tagmodel.decide import decide
from shared.tagmodel.runtime import INT8_ONNX_FILE, ONNX_FILE, TORCHSCRIPT_FILE, TagModelRuntime, length_order

# A variant may cost at most this many F1 points (micro or macro, categories or attributes) to be adopted.
MAX_F1_COST_POINTS = 0.2
# ...and change the tags of at most this share of listings when they are batched differently.
MAX_BATCH_DEPENDENT = 0.001


@dataclass(frozen=True)
class Variant:
    precision: str  # "fp32" | "int8"
    max_length: int
    bucketed: bool = True

    @property
    def name(self) -> str:
        return f"{self.precision}-len{self.max_length}" + ("" if self.bucketed else "-arrival")


def variants(served_length: int, lengths: Sequence[int] = (32, 64, 128, 256)) -> list[Variant]:
    """Both precisions at each length (bucketed), and both in arrival order at the served length."""
    out = [Variant(p, n) for p in ("fp32", "int8") for n in sorted({*lengths, served_length})]
    return out + [Variant(p, served_length, bucketed=False) for p in ("fp32", "int8")]


def _f1s(metrics: dict[str, Any]) -> dict[str, float]:
    out = {"micro_f1": float(metrics["micro_f1"]), "macro_f1": float(metrics["macro_f1"])}
    if "attributes" in metrics:
        out["attribute_f1"] = float(metrics["attributes"]["micro_f1"])
    return out


def _where_the_time_goes(runtime: TagModelRuntime, texts: list[str], batch_size: int) -> dict[str, float]:
    """Milliseconds per item in the tokenizer, the encoder and the head (one bucketed pass)."""
    order = length_order(texts)
    spent = {"tokenize": 0.0, "encoder": 0.0, "head": 0.0}
    for start in range(0, len(order), batch_size):
        batch = [texts[i] for i in order[start : start + batch_size]]
        t0 = time.perf_counter()
        ids, att = runtime.tokenize(batch)
        t1 = time.perf_counter()
        emb = runtime.encode(ids, att)
        t2 = time.perf_counter()
        runtime.head.logits(batch, emb)
        t3 = time.perf_counter()
        spent["tokenize"] += t1 - t0
        spent["encoder"] += t2 - t1
        spent["head"] += t3 - t2
    return {f"{k}_ms_per_item": round(1000 * v / len(texts), 3) for k, v in spent.items()}


def bench_runtime_variants(
    version_dir: Path,
    texts: Sequence[str],
    y: np.ndarray,
    mask: np.ndarray,
    *,
    batch_size: int = 32,
    repeats: int = 5,
    lengths: Sequence[int] = (32, 64, 128, 256),
) -> dict[str, Any]:
    """``items_per_s`` and F1 of each :func:`variants` of ``version_dir`` on ``texts`` (labels ``y``/``mask``).

    Returns
    -------
    dict
        ``variants`` (name → items_per_s, ``speedup`` and ``f1_cost_points`` against the
        ``reference``, F1s), ``served`` (the card's variant), ``adopt``, ``where_the_time_goes``,
        ``token_lengths`` (p50/p95/max of the test texts), ``encoder_mb``, ``machine``.
    """
    card = load_model_card(version_dir)
    items = list(texts)
    reference = Variant("fp32", card.max_length)
    served = Variant(card.encoder_precision, card.max_length)
    with tempfile.TemporaryDirectory() as tmp:
        int8 = version_dir / INT8_ONNX_FILE
        started = time.perf_counter()
        if not int8.is_file():
            int8 = Path(tmp) / INT8_ONNX_FILE
            write_int8_onnx(version_dir / ONNX_FILE, int8)
        quantize_s = time.perf_counter() - started
        files = {"fp32": version_dir / ONNX_FILE, "int8": int8}
        runtimes = {
            v: TagModelRuntime(version_dir, export_format="onnx", onnx_file=files[v.precision], max_length=v.max_length)
            for v in variants(card.max_length, lengths)
        }
        for rt in runtimes.values():
            rt.infer(items[:batch_size])  # warm-up: the first run plans the graph
        seconds: dict[Variant, list[float]] = {v: [] for v in runtimes}
        probs: dict[Variant, np.ndarray] = {}
        for _ in range(repeats):
            for v, rt in runtimes.items():
                t = time.perf_counter()
                probs[v] = rt.infer(items, batch_size=batch_size, bucketed=v.bucketed)["PROBS"]
                seconds[v].append(time.perf_counter() - t)
        alone = {v: rt.infer(items, batch_size=1)["PROBS"] for v, rt in runtimes.items()}
        time_split = _where_the_time_goes(runtimes[served], items, batch_size)
        tokens = [len(ids) for ids in runtimes[served].tokenizer(items, truncation=False)["input_ids"]]
        float_size = (version_dir / ONNX_FILE).stat().st_size
        int8_size = int8.stat().st_size

    rows: dict[str, dict[str, Any]] = {}
    for v, ts in seconds.items():
        pred = np.asarray(decide(probs[v].astype(np.float64), card)[0], dtype=bool)
        pred_alone = np.asarray(decide(alone[v].astype(np.float64), card)[0], dtype=bool)
        changed = float((pred != pred_alone).any(axis=1).mean())
        rows[v.name] = {"items_per_s": round(len(items) / float(np.median(ts)), 1),
                        **_f1s(tag_metrics(y, pred, mask, card.vocabulary)),
                        "batch_dependent_listings": round(changed, 4)}  # fmt: skip
    base = rows[reference.name]
    for row in rows.values():
        row["speedup"] = round(row["items_per_s"] / base["items_per_s"], 3)
        row["f1_cost_points"] = round(max(100 * (base[k] - row[k]) for k in base if k.endswith("_f1")), 2)
    acceptable = [
        v.name for v in seconds
        if v.bucketed and rows[v.name]["f1_cost_points"] <= MAX_F1_COST_POINTS
        and rows[v.name]["batch_dependent_listings"] <= MAX_BATCH_DEPENDENT
    ]  # fmt: skip
    return {
        "n_texts": len(items),
        "batch_size": batch_size,
        "repeats": repeats,
        "reference": reference.name,
        "served": served.name,
        "adopt": max(acceptable, key=lambda name: rows[name]["items_per_s"]),
        "max_f1_cost_points": MAX_F1_COST_POINTS,
        "max_batch_dependent_listings": MAX_BATCH_DEPENDENT,
        "variants": rows,
        "where_the_time_goes": {"variant": served.name, **time_split},
        "token_lengths": {"p50": int(np.percentile(tokens, 50)), "p95": int(np.percentile(tokens, 95)),
                          "max": int(max(tokens))},
        "encoder_mb": {"fp32": round(float_size / 2**20, 1), "int8": round(int8_size / 2**20, 1)},
        "quantize_s": round(quantize_s, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0]},
    }


def run_bench(
    run: Path | None, data: Path, data_format: str, limit: int | None, cache_dir: Path | None = None,
    n_format_texts: int = 512,
) -> dict[str, Any]:
    """Variants of a trained run's export (``run`` with ``config.json``), else of a quick model.

    The quick model (``tagloop train --quick`` over ``data``, the first ``limit`` listings) is
    what a catalog gets before fine-tuning; a trained run is also measured as ONNX vs TorchScript.
    Either way the test split is the one the model was measured on when it was trained.
    """
    from bench.train import bench_serving_formats
    from services.trainer.export import export as export_run
    from services.trainer.fast_job import quick_train
    from services.trainer.labels import label_matrix
    from services.trainer.train import TrainConfig, prepare

    with tempfile.TemporaryDirectory() as tmp:
        out: dict[str, Any] = {}
        if run is not None and (run / "config.json").is_file():
            config = TrainConfig.model_validate_json((run / "config.json").read_text())
            version_dir = export_run(run, Path(tmp), "tag_model", "onnx", also=("torchscript",))
            out["model"] = f"trained run {run}"
        else:
            config = TrainConfig(data=data, format=data_format, limit=limit)  # type: ignore[arg-type]
            quick = quick_train(config, Path(tmp), cache_dir=cache_dir)
            version_dir = Path(quick["exported"])
            out["model"] = "quick model (pretrained MiniLM + served head; no trained run found)"
            out["reference_micro_f1"] = quick["micro_f1"]  # what training measured on the same split
        prep = prepare(config)
        test = list(prep.split.test)
        texts = [prep.records[i].text for i in test]
        y, mask = label_matrix([prep.records[i] for i in test], load_model_card(version_dir).vocabulary)
        out |= {"data": str(config.data), "format": config.format, "limit": config.limit,
                **bench_runtime_variants(version_dir, texts, y, mask)}  # fmt: skip
        if (version_dir / TORCHSCRIPT_FILE).is_file():
            out["formats"] = bench_serving_formats(version_dir, texts[:n_format_texts])
    return out
