"""The deep job on real listings, real files, the real ONNX export and the real Postgres registry.

Version 1 is ``tagloop train --quick`` over ~300 Flipkart listings (pretrained MiniLM exported to
ONNX). Deep jobs with a tiny step cap fine-tune its encoder -- read back from that ONNX file --
on weighted feedback labels plus catalog replay, and export a candidate that the serving runtime
loads like any other version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from peft import PeftModel
from transformers import PreTrainedModel

from services.trainer.deep_job import (
    DeepOptions,
    _load_encoder_state,
    fine_tune,
    merge_adapter,
    run_deep_job,
    warm_start,
)
from services.trainer.export import TorchEncoder, VersionSpec, write_version
from services.trainer.fast_job import FastJobResult
from services.trainer.job_input import FastJobInput, TagLabel, dataset_fingerprint, records_from_catalog
from services.trainer.model import EmbeddingModel
from services.trainer.train import embed, prepare
from shared.model_registry import ModelRegistry, ModelStatus, migrate
from shared.tagmodel.card import load_model_card
from shared.tagmodel.head import TagHead
from shared.tagmodel.runtime import ONNX_FILE, TagModelRuntime
from shared.tagmodel.version_files import absolute_paths
from tests.integration.tag_versions import (  # noqa: F401  (quick_v1 is a fixture)
    copy_version,
    quick_v1,
    tiny_config,
    unique_model_name,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TINY = DeepOptions(max_steps=4, batch_size=8, probe_steps=50)


@dataclass(frozen=True)
class Setup:
    model: str
    repo: Path
    v1: Path
    job: FastJobInput
    texts: list[str]


@pytest.fixture(scope="module")
def setup(quick_v1: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Setup:  # noqa: F811
    model, repo = unique_model_name(), tmp_path_factory.mktemp("deep-job-repo")
    v1 = copy_version(quick_v1, repo, model)
    config = tiny_config(data_dir)
    prep = prepare(config)
    rng = np.random.default_rng(0)
    rows, cols = rng.choice(prep.split.train, 24), rng.integers(0, len(prep.vocab), 24)
    flips = [TagLabel(prep.records[r].id, prep.vocab[j].tag_id, int(prep.y[r, j] == 0), 5.0)
             for r, j in zip(rows.tolist(), cols.tolist(), strict=True)]  # fmt: skip
    job = FastJobInput(records_from_catalog(prep.records, config.max_depth), flips)
    return Setup(model, repo, v1, job, [r.text for r in prep.records[:40]])


@pytest.fixture(scope="module")
def registry(database_url: str) -> ModelRegistry:
    migrate(database_url)
    return ModelRegistry(database_url)


@pytest.fixture(scope="module")
def deep_v2(setup: Setup, registry: ModelRegistry, data_dir: Path) -> FastJobResult:
    return run_deep_job(setup.job, setup.repo, setup.model, base_version_dir=setup.v1, config=tiny_config(data_dir),
                        registry=registry, options=DeepOptions(**{**TINY.__dict__, "adapter": "full"}))  # fmt: skip


def test_the_candidate_serves_a_moved_encoder_through_the_same_runtime(setup: Setup, deep_v2: FastJobResult) -> None:
    assert deep_v2.version == 2 and deep_v2.version_dir == setup.repo / setup.model / "2"
    old, new = TagModelRuntime(setup.v1), TagModelRuntime(deep_v2.version_dir)
    served = new.infer(setup.texts)
    assert served["PROBS"].shape == (len(setup.texts), len(new.card.vocabulary))
    assert np.isfinite(served["PROBS"]).all() and np.allclose(np.linalg.norm(served["EMBEDDING"], axis=1), 1, atol=1e-4)
    moved = np.abs(served["EMBEDDING"] - old.embed(setup.texts)).max(axis=1)
    assert (moved > 1e-3).all(), moved  # every text's embedding changed: the encoder was fine-tuned
    # The same layout as a version from any other job, its own (not hard-linked) encoder, no machine paths.
    assert {p.name for p in deep_v2.version_dir.iterdir()} == {p.name for p in setup.v1.iterdir()}
    assert (deep_v2.version_dir / ONNX_FILE).stat().st_ino != (setup.v1 / ONNX_FILE).stat().st_ino
    assert absolute_paths(deep_v2.version_dir) == []


def test_the_card_and_registry_record_the_job(setup: Setup, deep_v2: FastJobResult, registry: ModelRegistry) -> None:
    card = load_model_card(deep_v2.version_dir)
    job = card.metrics["job"]
    assert isinstance(job, dict)
    assert (job["kind"], job["base_version"], job["adapter"], job["steps"], job["warm_start"]) == (
        "deep", 1, "full", 4, "onnx")  # fmt: skip
    assert job["pool_labelled"] > 0 and job["pool_replay"] > 0 and job["loss_last"] > 0
    assert card.data_fingerprint == deep_v2.fingerprint == dataset_fingerprint(setup.job)
    assert card.metrics["labels_applied"] == len(setup.job.labels)
    assert [v.tag_id for v in card.vocabulary] == [v.tag_id for v in load_model_card(setup.v1).vocabulary]
    row = registry.get(setup.model, 2)
    assert row is not None and row.status == ModelStatus.CANDIDATE
    assert row.training_job_id == deep_v2.job_id and deep_v2.job_id.startswith("deep-")
    assert row.dataset_fingerprint == deep_v2.fingerprint and row.metrics["job"]["kind"] == "deep"


def test_a_fine_tuned_version_warm_starts_the_next_job_exactly(setup: Setup, deep_v2: FastJobResult) -> None:
    model, _, source = warm_start(deep_v2.version_dir, len(load_model_card(deep_v2.version_dir).vocabulary))
    tokenizer = TagModelRuntime(deep_v2.version_dir).tokenizer
    ours = embed(model, tokenizer, setup.texts, load_model_card(deep_v2.version_dir).max_length)
    served = TagModelRuntime(deep_v2.version_dir).embed(setup.texts)
    assert source == "onnx"
    np.testing.assert_allclose(ours, served, atol=1e-4)
    assert np.abs(ours - TagModelRuntime(setup.v1).embed(setup.texts)).max() > 1e-3  # not the pretrained weights


def test_a_torchscript_version_warm_starts_too(setup: Setup, deep_v2: FastJobResult, tmp_path: Path) -> None:
    card = load_model_card(deep_v2.version_dir)
    model, tokenizer, _ = warm_start(deep_v2.version_dir, len(card.vocabulary))
    calibration = {"temperature": card.temperature, "thresholds": card.thresholds, "fingerprint": "ts"}
    spec = VersionSpec(vocab=card.vocabulary, head=TagHead.load(deep_v2.version_dir), calibration=calibration,
                       max_length=card.max_length)  # fmt: skip
    scripted = write_version(tmp_path, "tag_model", spec, TorchEncoder(EmbeddingModel(model), tokenizer), "torchscript")
    again, _, source = warm_start(scripted, len(card.vocabulary))
    assert source == "torchscript"
    served = TagModelRuntime(deep_v2.version_dir).embed(setup.texts)
    np.testing.assert_allclose(embed(again, tokenizer, setup.texts, card.max_length), served, atol=1e-4)


def test_a_version_missing_encoder_weights_is_refused() -> None:
    model, _, _ = warm_start(None, 3)
    state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    del state["encoder.encoder.layer.2.attention.self.value.weight"]  # e.g. an exporter that renamed it
    with pytest.raises(ValueError, match=r"layer\.2\.attention\.self\.value\.weight"):
        _load_encoder_state(model, state)


def test_lora_merged_export_serves_the_adapted_models_embeddings(setup: Setup, data_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(data_dir)
    vocab = load_model_card(setup.v1).vocabulary
    options = DeepOptions(**{**TINY.__dict__, "adapter": "lora", "lora_rank": 4})
    tuned = fine_tune(setup.job, vocab, setup.v1, config, options, max_length=config.max_length)
    assert isinstance(tuned.model.encoder, PeftModel)
    assert tuned.stats["trainable_params"] < 0.05 * sum(p.numel() for p in tuned.model.parameters())
    adapted = embed(tuned.model, tuned.tokenizer, setup.texts, config.max_length)
    merged = merge_adapter(tuned.model)
    assert isinstance(merged.encoder, PreTrainedModel) and not isinstance(merged.encoder, PeftModel)
    np.testing.assert_allclose(embed(merged, tuned.tokenizer, setup.texts, config.max_length), adapted, atol=1e-5)

    card = load_model_card(setup.v1)
    calibration = {"temperature": 1.0, "thresholds": card.thresholds, "fingerprint": "lora"}
    spec = VersionSpec(vocab=vocab, head=TagHead.load(setup.v1), calibration=calibration, max_length=card.max_length)
    exported = write_version(tmp_path, "tag_model", spec, TorchEncoder(EmbeddingModel(merged), tuned.tokenizer))
    served = TagModelRuntime(exported).embed(setup.texts)
    np.testing.assert_allclose(served, adapted, atol=1e-4)
    assert np.abs(served - TagModelRuntime(setup.v1).embed(setup.texts)).max() > 1e-3  # the adapter moved it
