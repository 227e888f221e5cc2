"""Tags that explain themselves (issue 11 §4): evidence from the head, zero-shot and the hierarchy; TagEvent v3."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from services.trainer.head import fit_head
from shared.events import (
    EvidenceTerm,
    Tag,
    TagEvent,
    TagEvidence,
    TagKind,
    TagOrigin,
    TagSource,
    decode,
    encode,
)
from shared.tagmodel.analyzer import analyze
from shared.tagmodel.card import ModelCard, VocabEntry
from shared.tagmodel.decide import ZeroShotTags, tags_from_probs
from shared.tagmodel.explain import explain_tags, explain_zero_shot
from shared.tagmodel.zero_shot import ZeroShotTagger
from shared.taxonomy import Category

C = TagKind.CATEGORY
VOCAB = [
    VocabEntry(tag_id="cat:clothing", name="Clothing", kind=C, level=1),
    VocabEntry(tag_id="cat:kitchen", name="Kitchen", kind=C, level=1),
    VocabEntry(tag_id="cat:clothing/shirts", name="Shirts", kind=C, level=2, parent="cat:clothing"),
]
WORDS = {"shirt": (1, 0, 1), "bottle": (0, 1, 0), "knife": (0, 1, 0), "jeans": (1, 0, 0)}


def _fitted() -> tuple[list[str], np.ndarray, object]:
    rng = np.random.default_rng(0)
    texts, rows = [], []
    colours = ["red", "blue", "green", "black", "white"]
    for i in range(60):
        word = list(WORDS)[i % 4]
        texts.append(f"{colours[i % 5]} {word} item{i}")
        rows.append(WORDS[word])
    emb = rng.normal(size=(len(texts), 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    y = np.array(rows, dtype=np.float32)
    return texts, emb, fit_head(texts, emb, y, np.ones_like(y), embedding_weight=0.5)


def test_margin_parts_add_up_to_the_logits_and_name_the_texts_terms() -> None:
    texts, emb, head = _fitted()
    logits = head.logits(texts, emb)  # type: ignore[attr-defined]
    for r in (0, 1, 5):
        parts = head.explain(texts[r], emb[r], [0, 1, 2], top_k=3)  # type: ignore[attr-defined]
        for j, p in enumerate(parts):
            assert p.margin == pytest.approx(logits[r, j], abs=1e-5)
            assert 0.0 <= p.embedding_share <= 1.0
            weights = [w for _, w in p.terms]
            assert len(p.terms) <= 3 and all(w > 0 for w in weights) and weights == sorted(weights, reverse=True)
            assert {t for t, _ in p.terms} <= set(analyze(texts[r]))
    shirt = head.explain("red shirt", emb[0], [2])[0]  # type: ignore[attr-defined]
    assert shirt.terms[0][0] == "shirt"


def test_model_tags_carry_their_terms_and_an_ancestor_added_by_the_closure_says_which_tag_implied_it() -> None:
    _, emb, head = _fitted()
    # The parent's threshold is out of reach: it is tagged only because its child is.
    card = ModelCard(model_name="m", version=1, vocabulary=VOCAB, thresholds=[0.999999, 0.5, 0.5],
                     data_fingerprint="x")  # fmt: skip
    text, e = "red shirt item0", emb[0]
    probs = 1.0 / (1.0 + np.exp(-head.logits([text], e[None, :])))  # type: ignore[attr-defined]
    assert probs[0, 2] >= 0.5 > probs[0, 1] and probs[0, 0] < 0.999999
    zs_entry = VocabEntry(tag_id="cat:apparel/sarees", name="Sarees", kind=C, level=2, parent="cat:clothing")
    zs = ZeroShotTags((zs_entry,), e[None, :].copy(), threshold=0.5, scale=20.0)
    tags = tags_from_probs(probs, card, embeddings=e[None, :], zero_shot=zs)[0]
    explained = {t.tag_id: t for t in explain_tags(tags, text, e, card, head, zs, top_k=2)}  # type: ignore[arg-type]
    assert set(explained) == {t.tag_id for t in tags} == {"cat:clothing", "cat:clothing/shirts", "cat:apparel/sarees"}

    shirts = explained["cat:clothing/shirts"].evidence
    assert shirts is not None and shirts.origin == TagOrigin.MODEL
    assert shirts.terms[0].term == "shirt" and len(shirts.terms) <= 2
    assert shirts.lexical + shirts.embedding + shirts.bias == pytest.approx(  # type: ignore[operator]
        float(head.logits([text], e[None, :])[0, 2]), abs=1e-3)  # type: ignore[attr-defined]

    clothing = explained["cat:clothing"].evidence
    assert clothing is not None and clothing.origin == TagOrigin.HIERARCHY
    # Implied by the best-scoring descendant that passed on its own (here both children did).
    best = max(("cat:clothing/shirts", "cat:apparel/sarees"), key=lambda t: explained[t].score)
    assert clothing.implied_by == best

    sarees = explained["cat:apparel/sarees"].evidence
    assert sarees is not None and sarees.origin == TagOrigin.ZERO_SHOT and sarees.similarity == pytest.approx(1.0)
    # Explaining changes nothing else about a tag.
    assert [t.model_copy(update={"evidence": None}) for t in explained.values()] == [
        t for t in sorted(tags, key=lambda t: list(explained).index(t.tag_id))
    ]


def test_zero_shot_only_tags_say_the_pick_and_its_implied_ancestors() -> None:
    cats = [
        Category("aa", ("Apparel",), ("服饰",)),
        Category("aa-1", ("Apparel", "Clothing"), ("服饰", "服装")),
        Category("el", ("Electronics",), ("电子",)),
    ]
    tagger = ZeroShotTagger.from_embeddings(cats, np.eye(3, dtype=np.float32))
    listing = np.array([0.1, 1.0, 0.0], dtype=np.float32)
    tags = tagger.tag(listing[None, :])[0]
    labels = {c.id: tagger.label_embeddings[i] for i, c in enumerate(tagger.categories)}
    ev = {t.taxonomy_id: t.evidence for t in explain_zero_shot(tags, listing, labels)}
    assert ev["aa-1"] is not None and ev["aa-1"].origin == TagOrigin.ZERO_SHOT
    assert ev["aa-1"].similarity == pytest.approx(1.0 / np.sqrt(1.01), abs=1e-4)
    assert ev["aa"] is not None and ev["aa"].origin == TagOrigin.HIERARCHY
    assert ev["aa"].implied_by == "cat:apparel/clothing"


def _tag(evidence: TagEvidence | None = None) -> Tag:
    return Tag(tag_id="cat:clothing", name="Clothing", kind=C, score=0.9, source=TagSource.MODEL, evidence=evidence)


def _event(*tags: Tag, **kw: object) -> TagEvent:
    return TagEvent(listing_id="l1", tags=list(tags), model_name="m", model_version="1", source_event_id="e1", **kw)


EVIDENCE = TagEvidence(origin=TagOrigin.MODEL, terms=[EvidenceTerm(term="shirt", weight=0.8)], embedding_share=0.25,
                       lexical=1.2, embedding=0.4, bias=-0.3)  # fmt: skip


def test_a_tag_event_without_evidence_is_the_version_2_event_it_always_was() -> None:
    ev = _event(_tag())
    assert ev.schema_version == 2
    wire = json.loads(encode(ev))
    assert wire["schema_version"] == 2 and "evidence" not in wire["tags"][0]
    assert set(wire["tags"][0]) == {"tag_id", "name", "kind", "score", "source", "name_zh", "taxonomy_id"}
    assert decode(TagEvent, encode(ev)) == ev


def test_evidence_makes_a_version_3_event_that_round_trips() -> None:
    ev = _event(_tag(EVIDENCE), _tag().model_copy(update={"tag_id": "cat:other"}))
    assert ev.schema_version == 3
    raw = encode(ev)
    assert json.loads(raw)["tags"][0]["evidence"]["terms"] == [{"term": "shirt", "weight": 0.8}]
    assert decode(TagEvent, raw) == ev
    with pytest.raises(ValidationError, match="schema_version 3"):
        _event(_tag(EVIDENCE), schema_version=2)
    wire = json.loads(raw)
    del wire["schema_version"]  # a producer that left the version out still gets the right one
    assert decode(TagEvent, json.dumps(wire).encode()).schema_version == 3


def test_evidence_is_validated_like_the_rest_of_the_event() -> None:
    raw = json.loads(encode(_event(_tag(EVIDENCE))))
    raw["tags"][0]["evidence"]["embedding_share"] = 1.5
    with pytest.raises(Exception, match="embedding_share"):
        decode(TagEvent, json.dumps(raw).encode())
    raw["tags"][0]["evidence"] = {"origin": "oracle"}
    with pytest.raises(Exception, match="origin"):
        decode(TagEvent, json.dumps(raw).encode())
