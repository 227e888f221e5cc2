"""Serving variants of a real version (issue 11 §5): the int8 encoder, length buckets, the bench's F1."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bench.tag_runtime import bench_runtime_variants
from services.trainer.embeddings import VersionEncoder
from services.trainer.evaluate import tag_metrics
from services.trainer.export import write_int8_onnx
from services.trainer.fast_job import quick_train
from services.trainer.labels import label_matrix
from services.trainer.scoring import decisions
from shared.catalog.readers import load_records
from shared.tagmodel.card import load_model_card
from shared.tagmodel.fingerprint import file_sha256
from shared.tagmodel.runtime import INT8_ONNX_FILE, ONNX_FILE, TagModelRuntime
from tests.integration.tag_versions import copy_version, quick_v1, tiny_config  # noqa: F401  (quick_v1: a fixture)


def _texts(data_dir: Path, n: int = 48) -> list:
    return load_records(data_dir, "flipkart", 2000)[-n:]  # past the ~300 quick_v1 was fitted on


def test_the_int8_encoder_is_smaller_and_embeds_like_the_float_one(quick_v1: Path, tmp_path: Path,  # noqa: F811
                                                                   data_dir: Path) -> None:
    int8 = tmp_path / "model.int8.onnx"
    write_int8_onnx(quick_v1 / ONNX_FILE, int8)
    assert int8.stat().st_size < 0.4 * (quick_v1 / ONNX_FILE).stat().st_size
    texts = [r.text for r in _texts(data_dir)]
    full = TagModelRuntime(quick_v1, onnx_file=quick_v1 / ONNX_FILE).embed(texts)
    quantized = TagModelRuntime(quick_v1, onnx_file=int8).embed(texts)
    assert not np.array_equal(full, quantized), "the int8 session should run other weights"
    cosine = (full * quantized).sum(1) / (np.linalg.norm(full, axis=1) * np.linalg.norm(quantized, axis=1))
    assert cosine.min() > 0.97 and cosine.mean() > 0.985  # per tensor: 0.94 / 0.963


def test_arrival_order_batches_give_the_bucketed_answer(quick_v1: Path, data_dir: Path) -> None:  # noqa: F811
    runtime = TagModelRuntime(quick_v1)
    texts = [r.text for r in _texts(data_dir)]
    bucketed = runtime.infer(texts, batch_size=8)["PROBS"]
    arrival = runtime.infer(texts, batch_size=8, bucketed=False)["PROBS"]
    assert np.allclose(bucketed, arrival, atol=1e-4)


def test_the_bench_scores_each_variant_as_served(quick_v1: Path, data_dir: Path) -> None:  # noqa: F811
    records = _texts(data_dir)
    card = load_model_card(quick_v1)
    texts = [r.text for r in records]
    y, mask = label_matrix(records, card.vocabulary)
    result = bench_runtime_variants(quick_v1, texts, y, mask, batch_size=16, repeats=1, lengths=(16, 32))
    rows = result["variants"]
    assert set(rows) == {"fp32-len16", "fp32-len32", "int8-len16", "int8-len32", "fp32-len32-arrival",
                         "int8-len32-arrival"}
    served = rows[result["served"]]
    assert result["served"] == result["reference"] == "fp32-len32"  # a version serves the float encoder by default
    expected = tag_metrics(y, decisions(quick_v1, texts), mask, card.vocabulary)
    assert served["micro_f1"] == float(expected["micro_f1"]) and served["f1_cost_points"] == 0
    # A float encoder's tags do not depend on the batch; an adopted variant's may not either.
    assert served["batch_dependent_listings"] == 0
    assert rows[result["adopt"]]["batch_dependent_listings"] <= result["max_batch_dependent_listings"]
    assert all(row["items_per_s"] > 0 for row in rows.values())
    assert rows[result["adopt"]]["f1_cost_points"] <= result["max_f1_cost_points"]
    assert result["token_lengths"]["max"] >= result["token_lengths"]["p50"] > 0
    assert result["encoder_mb"]["int8"] < result["encoder_mb"]["fp32"]


def test_an_int8_export_serves_the_quantized_file_and_keeps_the_float_one(data_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(data_dir).model_copy(update={"encoder_precision": "int8"})
    v1 = Path(quick_train(config, tmp_path / "repo", "tag_model", cache_dir=tmp_path / "cache")["exported"])
    assert load_model_card(v1).encoder_precision == "int8"
    assert (v1 / ONNX_FILE).is_file(), "the float encoder stays: the deep job warm-starts from it"
    runtime = TagModelRuntime(v1)
    assert runtime.encoder_file == v1 / INT8_ONNX_FILE
    assert runtime.infer(["red cotton shirt for men"])["PROBS"].shape == (1, len(load_model_card(v1).vocabulary))
    # The fast job's way (the champion's encoder reused, its head refitted on what it serves):
    v2 = copy_version(v1, tmp_path / "repo", "tag_model")
    assert load_model_card(v2).encoder_precision == "int8"
    assert os.path.samefile(v1 / INT8_ONNX_FILE, v2 / INT8_ONNX_FILE)
    # Embeddings are cached under the served file, never the float one's.
    assert VersionEncoder(v2).key.startswith(file_sha256(v1 / INT8_ONNX_FILE))
