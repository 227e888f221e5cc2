"""Benchmarks of the tag model: one training epoch on CPU, and ONNX vs TorchScript serving.

``bench_train_epoch`` times one epoch of the real training step (same batching, loss and
optimiser as ``tagloop train``) over the Flipkart listings; ``bench_serving_formats`` times the
two export formats on the same texts in the same process.
"""

from __future__ import annotations

import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.trainer.labels import build_vocabulary, label_matrix
from services.trainer.model import TagModel, load_tokenizer
from services.trainer.train import TrainConfig, _batches, _optimizer, seed_everything, tokenize, train_step
from shared.catalog.readers import load_records
from shared.tagmodel.runtime import TagModelRuntime


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def bench_train_epoch(
    data_dir: Path, limit: int | None = None, batch_size: int = 32, max_length: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Time one training epoch over all Flipkart listings (or the first ``limit``) on CPU.

    Returns
    -------
    dict
        ``n_listings``, ``steps``, ``epoch_s``, ``listings_per_s``, ``s_per_step``, ``setup_s``,
        ``peak_rss_mb`` (whole process), ``torch_threads``, ``batch_size``, ``max_length``.
    """
    seed_everything(seed)
    t0 = time.perf_counter()
    records = load_records(Path(data_dir), "flipkart", limit)
    vocab = build_vocabulary(records)
    y_np, m_np = label_matrix(records, vocab)
    tokenizer = load_tokenizer()
    encoded = tokenize(tokenizer, [r.text for r in records], max_length)
    model = TagModel(len(vocab)).train()
    config = TrainConfig(batch_size=batch_size, max_length=max_length, epochs=1)
    batches = _batches([len(e) for e in encoded], batch_size, np.random.default_rng(seed))
    opt, sched = _optimizer(model, config, len(batches))
    y, m = torch.from_numpy(y_np), torch.from_numpy(m_np)
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    for idx in batches:
        train_step(model, opt, sched, encoded, idx, y, m, tokenizer.pad_token_id)
    epoch_s = time.perf_counter() - t1
    return {
        "n_listings": len(records),
        "n_tags": len(vocab),
        "steps": len(batches),
        "epoch_s": round(epoch_s, 1),
        "listings_per_s": round(len(records) / epoch_s, 1),
        "s_per_step": round(epoch_s / max(1, len(batches)), 3),
        "setup_s": round(setup_s, 1),
        "peak_rss_mb": _peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "max_length": max_length,
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
    }


def bench_serving_formats(
    version_dir: Path, texts: list[str], batch_sizes: tuple[int, ...] = (1, 16, 64), repeats: int = 3
) -> dict[str, Any]:
    """Median seconds per text of ONNX (onnxruntime) and TorchScript on the same texts and batches.

    ``version_dir`` must hold both ``model.onnx`` and ``model.pt`` (``export(..., also=...)``).
    """
    out: dict[str, Any] = {"n_texts": len(texts)}
    runtimes = {fmt: TagModelRuntime(version_dir, export_format=fmt) for fmt in ("onnx", "torchscript")}
    for rt in runtimes.values():
        rt.infer(texts[:8])  # warm-up: first calls compile/plan
    for bs in batch_sizes:
        times: dict[str, list[float]] = {fmt: [] for fmt in runtimes}
        # Interleave the formats so a change in machine load hits both alike.
        for _ in range(repeats):
            for fmt, rt in runtimes.items():
                t = time.perf_counter()
                rt.infer(texts, batch_size=bs)
                times[fmt].append(time.perf_counter() - t)
        for fmt, ts in times.items():
            out[f"{fmt}_ms_per_text_b{bs}"] = round(1000 * float(np.median(ts)) / len(texts), 3)
    ref, other = runtimes["onnx"].infer(texts[:64]), runtimes["torchscript"].infer(texts[:64])
    out["max_abs_diff_probs"] = float(np.abs(ref["PROBS"] - other["PROBS"]).max())
    out["torch_threads"] = torch.get_num_threads()
    return out
