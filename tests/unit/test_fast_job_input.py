"""The fast job's input (records + weighted labels -> matrices), the live-version rule, Triton's config JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.trainer.embeddings import EmbeddingCache, embed_texts, text_key
from services.trainer.feedback_labels import Label, LabelKind
from services.trainer.job_input import (
    FastJobInput,
    JobRecord,
    TagLabel,
    dataset_fingerprint,
    label_arrays,
    records_from_catalog,
)
from services.trainer.model_ops import live_versions
from shared.catalog.records import Record
from shared.model_registry import ModelStatus, ModelVersion
from shared.model_repository import render_tag_model_config
from shared.tagmodel.card import VocabEntry
from shared.tagmodel.tag_ids import attribute_tag_id, category_tag_id
from shared.triton_admin import config_json

CLOTHING, SHIRTS = category_tag_id(["Clothing"]), category_tag_id(["Clothing", "Shirts"])
COTTON = attribute_tag_id("Fabric", "Cotton")
VOCAB = [
    VocabEntry(tag_id=CLOTHING, name="Clothing", kind="category", level=1),
    VocabEntry(tag_id=SHIRTS, name="Shirts", kind="category", level=2, parent=CLOTHING),
    VocabEntry(tag_id=COTTON, name="Fabric: Cotton", kind="attribute", level=0),
]


def test_catalog_records_give_complete_rows_and_mask_unknown_attributes() -> None:
    records = records_from_catalog([
        Record("a", "cotton shirt", ("Clothing > Shirts", "Fabric=Cotton"), has_attributes=True),
        Record("b", "mug", ("Kitchen",), has_attributes=False),
    ])  # fmt: skip
    arrays = label_arrays(FastJobInput(records), VOCAB)
    assert arrays.y.tolist() == [[1, 1, 1], [0, 0, 0]]
    assert arrays.mask.tolist() == [[1, 1, 1], [1, 1, 0]]  # b's fabric is unknown, not "not cotton"
    np.testing.assert_array_equal(arrays.weight, arrays.mask)


def test_weighted_labels_override_cells_and_what_cannot_be_used_is_counted() -> None:
    records = [JobRecord("a", "cotton shirt", frozenset({CLOTHING, SHIRTS})), JobRecord("f", "feedback only")]
    labels = [
        TagLabel("a", SHIRTS, 0, 5.0),  # a merchant rejects the catalog's tag
        TagLabel("f", COTTON, 1, 2.0),  # a listing known only from feedback
        TagLabel("a", CLOTHING, 1, 0.0),  # weight 0: the cell leaves training
        TagLabel("zz", SHIRTS, 1, 1.0),  # no text for this listing
        TagLabel("a", "cat:unknown", 1, 1.0),  # not in the vocabulary
    ]
    arrays = label_arrays(FastJobInput(records, labels), VOCAB)
    assert arrays.y.tolist() == [[1, 0, 0], [0, 0, 1]]
    assert arrays.mask.tolist() == [[0, 1, 1], [0, 0, 1]]
    assert arrays.weight.tolist() == [[0, 5, 1], [0, 0, 2]]
    assert (arrays.labels_applied, arrays.labels_unknown_listing, arrays.labels_unknown_tag) == (3, 1, 1)


def test_the_label_builders_labels_are_weighted_labels() -> None:
    labels = [Label("a", SHIRTS, 0, 5.0, LabelKind.STRONG), Label("a", COTTON, 1, 1.5, LabelKind.WEAK)]
    arrays = label_arrays(FastJobInput([JobRecord("a", "shirt")], labels), VOCAB)
    assert arrays.weight.tolist() == [[0, 5, 1.5]] and arrays.y.tolist() == [[0, 0, 1]]


def test_fingerprint_ignores_order_and_sees_every_label_and_weight() -> None:
    records = [JobRecord("a", "x", frozenset({CLOTHING})), JobRecord("b", "y")]
    labels = [TagLabel("a", SHIRTS, 1, 1.0), TagLabel("b", SHIRTS, 0, 2.0)]
    base = dataset_fingerprint(FastJobInput(records, labels))
    assert dataset_fingerprint(FastJobInput(records[::-1], labels[::-1])) == base
    assert dataset_fingerprint(FastJobInput(records, [labels[0], TagLabel("b", SHIRTS, 0, 2.5)])) != base
    assert dataset_fingerprint(FastJobInput(records, labels[:1])) != base
    assert dataset_fingerprint(FastJobInput(records, labels, fingerprint="given")) == "given"


def _v(version: int, status: ModelStatus) -> ModelVersion:
    return ModelVersion("m", version, status, None, None)


def test_live_versions_are_champion_rollouts_and_the_rollback_target() -> None:
    versions = [_v(1, ModelStatus.RETIRED), _v(2, ModelStatus.RETIRED), _v(3, ModelStatus.CHAMPION),
                _v(4, ModelStatus.SHADOW), _v(5, ModelStatus.ROLLED_BACK), _v(6, ModelStatus.CANDIDATE)]  # fmt: skip
    assert live_versions(versions, rollback_target=2) == {2, 3, 4}
    assert live_versions(versions, rollback_target=None) == {3, 4}


def test_config_json_is_the_rendered_config_as_tritons_load_override_wants_it() -> None:
    config = json.loads(config_json(render_tag_model_config("tag_model", versions=[3, 1])))
    assert config["name"] == "tag_model" and config["backend"] == "python"
    assert config["version_policy"] == {"specific": {"versions": ["1", "3"]}}  # int64 is a string in JSON
    assert [o["name"] for o in config["output"]] == ["PROBS", "EMBEDDING"]
    with pytest.raises(ValueError, match="not a Triton model configuration"):
        config_json("name: 'x'\nno_such_field: 1\n")


class CountingEncoder:
    """A tiny deterministic :class:`~services.trainer.embeddings.TextEncoder` that counts what it embeds."""

    key = "counting-v1"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.seen += texts
        return np.array([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], dtype=np.float32)


def test_embedding_cache_embeds_each_text_once_per_encoder(tmp_path: Path) -> None:
    texts = [f"listing {i}" for i in range(600)]  # some digests end in NUL bytes: they must round-trip
    assert any(text_key(t).endswith(b"\x00") for t in texts)
    encoder = CountingEncoder()
    first = embed_texts(encoder, [*texts[:400], texts[0]], EmbeddingCache(tmp_path))
    assert len(encoder.seen) == 400 and first.shape == (401, 3)
    cache = EmbeddingCache(tmp_path)
    again = embed_texts(encoder, texts, cache)
    assert encoder.seen[400:] == texts[400:] and (cache.hits, cache.misses) == (400, 200)
    np.testing.assert_array_equal(again[:400], first[:400])
    other = CountingEncoder()
    other.key = "counting-v2"  # another encoder: nothing is shared
    embed_texts(other, texts[:10], EmbeddingCache(tmp_path))
    assert len(other.seen) == 10
