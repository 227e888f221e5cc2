"""The fast job on real listings, the real Postgres registry and the real tritonserver.

Version 1 is ``tagloop train --quick`` over ~300 Flipkart listings; the fast job refits its
head with weighted feedback labels that contradict the catalog on a few (listing, tag) cells
and exports version 2 next to it. Then the in-place load finding this project relies on
(:mod:`services.trainer.model_ops`): loading the model with versions [1, 2] while requests
for version 1 are in flight fails none of them; leaving version 1 out fails its requests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from services.trainer.embeddings import EmbeddingCache, VersionEncoder
from services.trainer.fast_job import FastJobResult, fit_version, run_fast_job
from services.trainer.job_input import FastJobInput, TagLabel, dataset_fingerprint, records_from_catalog
from services.trainer.model_ops import serve_versions
from services.trainer.train import prepare
from shared.devstack.triton import TritonEndpoints
from shared.events import TagKind
from shared.model_registry import ModelRegistry, ModelStatus, migrate
from shared.tagmodel.card import load_model_card
from shared.tagmodel.head import TagHead
from shared.tagmodel.runtime import ONNX_FILE, TagModelRuntime
from shared.triton_admin import TritonAdmin
from shared.triton_client import TritonTextClient
from tests.integration.tag_versions import (  # noqa: F401  (quick_v1 is a fixture)
    Hammer,
    copy_version,
    quick_v1,
    tag_model_triton,
    tiny_config,
    unique_model_name,
)

pytestmark = pytest.mark.integration
N_FLIPS = 4


@dataclass(frozen=True)
class Setup:
    model: str
    repo: Path
    v1: Path
    job: FastJobInput
    flips: list[TagLabel]
    texts: dict[str, str]  # listing id -> text
    cache: Path


@pytest.fixture(scope="module")
def setup(quick_v1: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Setup:  # noqa: F811
    model, repo = unique_model_name(), tmp_path_factory.mktemp("fast-job-repo")
    v1 = copy_version(quick_v1, repo, model)
    config = tiny_config(data_dir)
    prep = prepare(config)
    vocab = load_model_card(v1).vocabulary
    index = {v.tag_id: j for j, v in enumerate(prep.vocab)}
    assert [v.tag_id for v in vocab] == [v.tag_id for v in prep.vocab]
    train = prep.split.train
    # The most frequent level-1 category: say "no" on listings that have it, "yes" on some that do not.
    counts = prep.y[train].sum(axis=0)
    top = max((v for v in vocab if v.kind == TagKind.CATEGORY and v.level == 1), key=lambda v: counts[index[v.tag_id]])
    j = index[top.tag_id]
    has = [i for i in train if prep.y[i, j] > 0][:N_FLIPS]
    lacks = [i for i in train if prep.y[i, j] == 0][:N_FLIPS]
    flips = [TagLabel(prep.records[i].id, top.tag_id, 0, 5.0) for i in has]
    flips += [TagLabel(prep.records[i].id, top.tag_id, 1, 5.0) for i in lacks]
    job = FastJobInput(records_from_catalog(prep.records, config.max_depth), flips)
    texts = {r.id: r.text for r in prep.records}
    return Setup(model, repo, v1, job, flips, texts, tmp_path_factory.mktemp("fast-job-cache"))


@pytest.fixture(scope="module")
def registry(database_url: str) -> ModelRegistry:
    migrate(database_url)
    return ModelRegistry(database_url)


@pytest.fixture(scope="module")
def fast_v2(setup: Setup, registry: ModelRegistry, data_dir: Path) -> FastJobResult:
    return run_fast_job(setup.job, setup.repo, setup.model, base_version_dir=setup.v1, config=tiny_config(data_dir),
                        registry=registry, cache_dir=setup.cache)  # fmt: skip


@pytest.fixture(scope="module")
def triton(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonEndpoints]:
    with tag_model_triton(tmp_path_factory.mktemp("fast-job-triton"), setup.repo, setup.model, [1]) as endpoints:
        yield endpoints


def _probs(version_dir: Path, texts: list[str]) -> np.ndarray:
    return TagModelRuntime(version_dir).infer(texts)["PROBS"]


def test_v2_head_moved_the_way_the_weighted_labels_say(setup: Setup, fast_v2: FastJobResult) -> None:
    assert fast_v2.version == 2 and fast_v2.version_dir == setup.repo / setup.model / "2"
    card = load_model_card(fast_v2.version_dir)
    j = card.tag_index()[setup.flips[0].tag_id]
    texts = [setup.texts[f.listing_id] for f in setup.flips]
    before, after = _probs(setup.v1, texts)[:, j], _probs(fast_v2.version_dir, texts)[:, j]
    wanted = np.array([f.label for f in setup.flips])
    assert np.all(np.where(wanted == 1, after - before, before - after) > 0.1), (before, after, wanted)
    assert np.all((after >= card.thresholds[j]) == (wanted == 1))  # every flipped decision follows its label
    # Elsewhere the refit keeps what version 1 knew: same data, same seed, same encoder.
    others = [t for lid, t in setup.texts.items() if lid not in {f.listing_id for f in setup.flips}][:100]
    assert np.abs(_probs(setup.v1, others) - _probs(fast_v2.version_dir, others)).mean() < 0.02
    assert fast_v2.metrics["labels_applied"] == 2 * N_FLIPS
    assert fast_v2.metrics["job"]["base_version"] == 1


def test_v2_reuses_the_champions_encoder_and_the_one_export_layout(setup: Setup, fast_v2: FastJobResult) -> None:
    new, old = fast_v2.version_dir, setup.v1
    assert {p.name for p in new.iterdir()} == {p.name for p in old.iterdir()}
    assert (new / ONNX_FILE).stat().st_ino == (old / ONNX_FILE).stat().st_ino  # hard-linked, not re-exported
    texts = ["red cotton shirt", "steel bottle"]
    np.testing.assert_array_equal(TagModelRuntime(old).embed(texts), TagModelRuntime(new).embed(texts))
    card = load_model_card(new)
    assert (card.model_name, card.version, card.export_format) == (setup.model, 2, "onnx")
    assert card.data_fingerprint == fast_v2.fingerprint == dataset_fingerprint(setup.job)
    assert card.data_fingerprint != load_model_card(old).data_fingerprint


def test_v2_is_registered_as_candidate_with_job_fingerprint_and_metrics(
    setup: Setup, fast_v2: FastJobResult, registry: ModelRegistry
) -> None:
    row = registry.get(setup.model, 2)
    assert row is not None and row == fast_v2.registered
    assert row.status == ModelStatus.CANDIDATE
    assert row.training_job_id == fast_v2.job_id and fast_v2.job_id.startswith("fast-")
    assert row.dataset_fingerprint == fast_v2.fingerprint and len(row.dataset_fingerprint) == 64
    for key in ("micro_f1", "macro_f1", "precision", "recall", "coverage", "n_train", "n_val", "n_test"):
        assert key in row.metrics
    assert 0.0 < row.metrics["micro_f1"] <= 1.0
    (change,) = registry.history(setup.model, 2)
    assert change.to_status == ModelStatus.CANDIDATE and fast_v2.job_id in change.reason


def test_a_second_job_embeds_nothing_again_and_fits_the_same_head(
    setup: Setup, fast_v2: FastJobResult, data_dir: Path
) -> None:
    cache = EmbeddingCache(setup.cache)
    card = load_model_card(setup.v1)
    assert card.metrics["head_embedding_weight"] == tiny_config(data_dir).pretrained_head_embedding_weight
    fitted = fit_version(setup.job, card.vocabulary, VersionEncoder(setup.v1), tiny_config(data_dir), cache,
                         max_length=32, embedding_weight=2.0)  # what the fast job took from version 1's card
    assert fast_v2.metrics["head_embedding_weight"] == 2.0
    assert cache.misses == 0 and cache.hits > 0
    served = TagHead.load(fast_v2.version_dir)
    np.testing.assert_allclose(fitted.spec.head.lexical, served.lexical, atol=1e-6)
    np.testing.assert_allclose(fitted.spec.head.bias, served.bias, atol=1e-6)


@pytest.mark.slow  # 25-60 s: keeps the default suite under 15 minutes
def test_loading_v2_beside_v1_fails_no_request_in_flight(
    setup: Setup, fast_v2: FastJobResult, triton: TritonEndpoints
) -> None:
    url, model = triton.http_url, setup.model
    with TritonAdmin(url, timeout_s=300) as admin:
        assert admin.ready_versions(model) == [1]
        with Hammer(url, model, 1) as hammer:
            hammer.wait_for(3)
            before = hammer.ok
            assert serve_versions(admin, model, [1, 2], timeout_s=240) == [1, 2]
            hammer.wait_for(before + 3)  # requests kept being answered after the load, too
        assert hammer.failed == 0, sorted(hammer.errors)
        assert admin.ready_versions(model) == [1, 2]
        assert admin.stats(model)[1].fail_count == 0
    texts = [setup.texts[f.listing_id] for f in setup.flips]
    client = TritonTextClient(url, model, timeout_s=120, model_version="2")
    try:
        served = client.infer(texts)
    finally:
        client.close()
    np.testing.assert_allclose(served["PROBS"], _probs(fast_v2.version_dir, texts), atol=1e-4)


def test_leaving_a_version_out_fails_its_requests_at_once(
    setup: Setup, fast_v2: FastJobResult, triton: TritonEndpoints
) -> None:
    """Why model ops never drop a version that may still get traffic (last here: it unloads version 1)."""
    url, model = triton.http_url, setup.model
    with TritonAdmin(url, timeout_s=300) as admin:
        serve_versions(admin, model, [1, 2], timeout_s=240)
        with Hammer(url, model, 1) as hammer:
            hammer.wait_for(3)
            serve_versions(admin, model, [2], timeout_s=240)
            time.sleep(1.0)  # requests for version 1 keep coming for a second after the load
        assert admin.ready_versions(model) == [2]
    assert hammer.failed > 0 and any("not at ready state" in e or "unknown model" in e for e in hammer.errors)
