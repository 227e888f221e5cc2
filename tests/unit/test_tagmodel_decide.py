"""Tags from model outputs: closure, taxonomy restriction, zero-shot, determinism."""

from __future__ import annotations

import numpy as np

from shared.events import TagKind, TagSource
from shared.tagmodel.card import ModelCard, VocabEntry
from shared.tagmodel.decide import ZeroShotTags, close_hierarchy, decide, parent_index, tags_from_probs

C, A = TagKind.CATEGORY, TagKind.ATTRIBUTE
VOCAB = [
    VocabEntry(
        tag_id="cat:clothing",
        name="Clothing",
        kind=C,
        level=1,
        taxonomy_id="aa-1",
        name_zh="服装",
        allowed_attributes=["color", "fabric"],
    ),
    VocabEntry(tag_id="cat:watches", name="Watches", kind=C, level=1),
    VocabEntry(tag_id="cat:clothing/women", name="Women", kind=C, level=2, parent="cat:clothing"),
    VocabEntry(tag_id="cat:clothing/women/tops", name="Tops", kind=C, level=3, parent="cat:clothing/women"),
    VocabEntry(tag_id="attr:fabric=cotton", name="Fabric: Cotton", kind=A, level=0, attribute_handle="fabric"),
    VocabEntry(tag_id="attr:dial=round", name="Dial: Round", kind=A, level=0, attribute_handle="dial_shape"),
    VocabEntry(tag_id="attr:occasion=casual", name="Occasion: Casual", kind=A, level=0),
]
CARD = ModelCard(
    model_name="tag_model", version=1, vocabulary=VOCAB, thresholds=[0.5] * len(VOCAB), data_fingerprint="x"
)


def _random_probs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, len(VOCAB)))


def test_every_predicted_category_has_its_ancestors() -> None:
    probs = _random_probs(400)
    by_id = {v.tag_id: v for v in VOCAB}
    for tags in tags_from_probs(probs, CARD):
        ids = {t.tag_id for t in tags}
        for t in tags:
            parent = by_id[t.tag_id].parent
            while parent is not None:
                assert parent in ids
                parent = by_id[parent].parent


def test_closure_lifts_ancestor_scores() -> None:
    probs = np.array([[0.2, 0.0, 0.1, 0.9, 0, 0, 0]])
    tags = {t.tag_id: t for t in tags_from_probs(probs, CARD)[0]}
    assert set(tags) == {"cat:clothing", "cat:clothing/women", "cat:clothing/women/tops"}
    assert tags["cat:clothing"].score == tags["cat:clothing/women"].score == 0.9
    assert tags["cat:clothing"].taxonomy_id == "aa-1" and tags["cat:clothing"].name_zh == "服装"
    assert all(t.source == TagSource.MODEL for t in tags.values())
    pred, _ = decide(probs, CARD)
    assert pred[0].tolist() == [True, False, True, True, False, False, False]
    closed, _ = close_hierarchy(probs >= 0.5, probs, parent_index(VOCAB))
    assert (closed == pred).all()


def test_attributes_restricted_to_what_the_taxonomy_allows() -> None:
    # Clothing (mapped, allows fabric) predicted: the dial attribute is dropped, unmapped occasion kept.
    probs = np.array([[0.9, 0, 0, 0, 0.8, 0.8, 0.8]])
    ids = [t.tag_id for t in tags_from_probs(probs, CARD)[0]]
    assert "attr:fabric=cotton" in ids and "attr:occasion=casual" in ids and "attr:dial=round" not in ids
    # Only an unmapped category predicted: no restriction.
    probs = np.array([[0, 0.9, 0, 0, 0.8, 0.8, 0.8]])
    ids = [t.tag_id for t in tags_from_probs(probs, CARD)[0]]
    assert {"attr:fabric=cotton", "attr:dial=round", "attr:occasion=casual"} <= set(ids)


def test_sorted_rounded_and_deterministic() -> None:
    probs = _random_probs(50, seed=3)
    a = tags_from_probs(probs, CARD)
    b = tags_from_probs(probs.copy(), CARD)
    assert [[t.model_dump_json() for t in ts] for ts in a] == [[t.model_dump_json() for t in ts] for ts in b]
    for tags in a:
        keys = [(t.kind.value, -t.score, t.tag_id) for t in tags]
        assert keys == sorted(keys)
        assert all(round(t.score, 6) == t.score and 0 <= t.score <= 1 for t in tags)


def test_zero_shot_tags_for_cold_start() -> None:
    emb = np.eye(4, dtype=np.float32)[:2]  # two listings
    cold = (
        VocabEntry(tag_id="zs:sarees", name="Sarees", kind=C, level=1),
        VocabEntry(tag_id="cat:watches", name="Watches", kind=C, level=1),  # known to the model: skipped
    )
    zs = ZeroShotTags(entries=cold, embeddings=np.eye(4, dtype=np.float32)[[0, 1]], threshold=0.5)
    probs = np.zeros((2, len(VOCAB)))
    tags = tags_from_probs(probs, CARD, embeddings=emb, zero_shot=zs)
    assert [(t.tag_id, t.source) for t in tags[0]] == [("zs:sarees", TagSource.ZERO_SHOT)]
    assert tags[0][0].score > 0.99
    assert tags[1] == []  # similarity 0 to "Sarees"; "Watches" comes only from the model


def test_zero_shot_uses_the_card_calibration() -> None:
    card = CARD.model_copy(update={"zero_shot_threshold": 0.3, "zero_shot_scale": 10.0})
    entry = VocabEntry(tag_id="zs:x", name="X", kind=A, level=0)
    zs = ZeroShotTags.from_card(card, [entry], np.array([[1.0, 0.0]]))
    scores = zs.scores(np.array([[0.3, 0.954], [1.0, 0.0]]))
    assert abs(scores[0, 0] - 0.5) < 1e-9  # similarity at the threshold -> 0.5
    assert abs(scores[1, 0] - 1 / (1 + np.exp(-7.0))) < 1e-9


def test_no_listings_no_tags_whatever_shape_the_empty_answer_has() -> None:
    # Triton answers a request of zero texts with 0 x 0 outputs (the PROBS width is dynamic).
    assert tags_from_probs(np.zeros((0, 0)), CARD) == []
    assert tags_from_probs(np.zeros((0, len(CARD.vocabulary))), CARD) == []
