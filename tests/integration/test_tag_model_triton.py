"""Train a tiny tag model on real listings, export it, serve it from the real Triton, compare.

Covers the whole issue-3 path in CI time: training (seeded, resumable), calibration, the
evaluation JSON with its baseline on the same split, export to a versioned model repository,
Triton's outputs against in-process outputs, and hierarchy closure of every prediction.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from services.trainer.baseline import TfidfSvmBaseline
from services.trainer.evaluate import tag_metrics
from services.trainer.export import export
from services.trainer.model import load_tokenizer
from services.trainer.report import evaluate_run
from services.trainer.train import MODEL_FILE, TrainConfig, load_trained, prepare, score, train
from shared.devstack.triton import TritonEndpoints, start_triton, stop_triton, tritonserver_available
from shared.events import TagKind
from shared.model_repository import latest_version, render_tag_model_config
from shared.tagmodel.card import load_model_card
from shared.tagmodel.decide import close_hierarchy, parent_index, tags_from_probs
from shared.tagmodel.runtime import TagModelRuntime
from shared.tagmodel.version_files import ENTRY_POINT, absolute_paths
from shared.triton_client import TritonTextClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tag_model"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _config(data_dir: Path, out: Path, limit: int = 400) -> TrainConfig:
    return TrainConfig(
        data=data_dir, out=out, taxonomy=data_dir / "shopify-taxonomy", limit=limit, epochs=1,
        batch_size=32, max_length=32, min_count=3, min_attribute_count=3, checkpoint_every=4,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tag-run")
    train(_config(data_dir, out), progress=False)
    return out


@pytest.fixture(scope="module")
def eval_json(run_dir: Path) -> dict:
    return evaluate_run(run_dir)


@pytest.fixture(scope="module")
def version_dir(run_dir: Path, eval_json: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("model-repo")
    return export(run_dir, repo, MODEL)


@pytest.fixture(scope="module")
def triton(version_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonEndpoints]:
    reason = tritonserver_available()
    if reason is not None:
        pytest.skip(f"bundled tritonserver unavailable: {reason}")
    state = tmp_path_factory.mktemp("triton-tagmodel-state")
    endpoints = start_triton(state, version_dir.parents[1], [MODEL], name="triton-tagmodel")
    try:
        yield endpoints
    finally:
        stop_triton(state, name="triton-tagmodel")


def _texts(run_dir: Path, n: int = 48) -> list[str]:
    config, *_ = load_trained(run_dir)
    prep = prepare(config)
    return [prep.records[i].text for i in prep.split.test[:n]]


def test_eval_json_has_keys_and_baseline_on_the_same_split(run_dir: Path, eval_json: dict) -> None:
    for key in (
        "micro_f1",
        "macro_f1",
        "baseline_micro_f1",
        "baseline_macro_f1",
        "coverage",
        "n_test",
        "n_tags",
    ):
        assert key in eval_json
    config, vocab, *_ = load_trained(run_dir)
    prep = prepare(config)
    assert eval_json["n_test"] == len(prep.split.test) > 0
    assert eval_json["n_tags"] == len(vocab)
    assert set(eval_json["levels"]) <= {"1", "2", "3"}
    # Recompute the baseline on the test split independently: the same numbers come out.
    texts = [r.text for r in prep.records]
    train_idx = prep.split.train
    base = TfidfSvmBaseline(seed=config.seed).fit(
        [texts[i] for i in train_idx], prep.y[train_idx], prep.mask[train_idx]
    )
    margins = base.decision_function([texts[i] for i in prep.split.test])
    pred, _ = close_hierarchy(margins > 0, margins, parent_index(vocab))
    again = tag_metrics(prep.y[prep.split.test], pred, prep.mask[prep.split.test], vocab)
    assert again["micro_f1"] == eval_json["baseline_micro_f1"]
    assert again["macro_f1"] == eval_json["baseline_macro_f1"]
    assert 0.0 <= eval_json["coverage"] <= 1.0


def test_export_writes_a_versioned_model_with_its_card(version_dir: Path, run_dir: Path, eval_json: dict) -> None:
    assert version_dir.name == "1" and latest_version(version_dir.parents[1], MODEL) == 1
    expected = {"model.py", "model.onnx", "head.npz", "lexicon.json", "model_card.json", "tokenizer"}
    assert expected <= {p.name for p in version_dir.iterdir()}
    assert (version_dir.parent / "config.pbtxt").read_text() == render_tag_model_config(MODEL)
    assert (version_dir / "model.py").read_text() == ENTRY_POINT
    # No path of this machine in any file (the ONNX graph included): versions are served elsewhere.
    assert absolute_paths(version_dir) == []
    for needle in {str(REPO_ROOT), str(run_dir.resolve()), str(version_dir.parents[1])}:
        for f in (p for p in version_dir.rglob("*") if p.is_file()):
            assert needle.encode() not in f.read_bytes(), f"{f.name} holds {needle}"
    card = load_model_card(version_dir)
    assert card.model_name == MODEL and card.version == 1 and card.export_format == "onnx"
    assert len(card.thresholds) == len(card.vocabulary) == eval_json["n_tags"]
    assert card.metrics["micro_f1"] == eval_json["micro_f1"]
    assert len(card.data_fingerprint) == 64
    assert any(v.taxonomy_id for v in card.vocabulary)  # the Shopify mapping reached the card


def test_triton_outputs_equal_in_process_outputs_and_closure_holds(
    triton: TritonEndpoints, version_dir: Path, run_dir: Path
) -> None:
    texts = _texts(run_dir)
    client = TritonTextClient(triton.http_url, MODEL, timeout_s=60)
    try:
        served = client.infer(texts)
        assert client.model_version() == "1"
    finally:
        client.close()
    local = TagModelRuntime(version_dir).infer(texts)
    card = load_model_card(version_dir)
    assert served["PROBS"].shape == (len(texts), len(card.vocabulary))
    assert served["EMBEDDING"].shape == (len(texts), 384)
    np.testing.assert_allclose(served["PROBS"], local["PROBS"], atol=1e-4)
    np.testing.assert_allclose(served["EMBEDDING"], local["EMBEDDING"], atol=1e-4)
    # And the exported graph computes what the trained torch model computes.
    config, _, model, head, calibration = load_trained(run_dir)
    logits, emb = score(model, head, load_tokenizer(), texts, config.max_length)
    np.testing.assert_allclose(served["PROBS"], 1 / (1 + np.exp(-logits / calibration["temperature"])), atol=1e-4)
    np.testing.assert_allclose(served["EMBEDDING"], emb, atol=1e-4)

    parents = {v.tag_id: v.parent for v in card.vocabulary}
    all_tags = tags_from_probs(served["PROBS"], card)
    assert any(all_tags)
    for tags in all_tags:
        ids = {t.tag_id for t in tags}
        for t in tags:
            if t.kind == TagKind.CATEGORY:
                parent = parents[t.tag_id]
                while parent is not None:
                    assert parent in ids
                    parent = parents[parent]


def test_training_is_seeded_and_resumable(data_dir: Path, tmp_path: Path) -> None:
    full = train(_config(data_dir, tmp_path / "full", limit=120), progress=False)
    interrupted = _config(data_dir, tmp_path / "resumed", limit=120)
    train(interrupted, progress=False, stop_after_steps=2)
    assert not (tmp_path / "resumed" / MODEL_FILE).exists()
    resumed = train(interrupted, resume=True, progress=False)
    a = torch.load(full / MODEL_FILE, weights_only=True)
    b = torch.load(resumed / MODEL_FILE, weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
