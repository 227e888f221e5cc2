"""Tags that explain themselves: each tag's :class:`~shared.events.TagEvidence`. Pure numpy.

Computed from what produced the tags, for one listing at a time:

* a model tag (or an exploratory candidate): the head's margin split into the listing's terms,
  the embedding block and the bias (:meth:`shared.tagmodel.head.TagHead.explain`);
* a zero-shot tag: the cosine similarity of the listing to the tag's name;
* a tag that did not pass on its own but is the ancestor of one that did: ``hierarchy``, with
  the descendant that implied it (the closure of :func:`shared.tagmodel.decide.close_hierarchy`).

Evidence is extra work (a second pass over the listing's terms), so it is computed only when
asked: ``tagloop tag`` always, the tagger when ``TAGLOOP_TAGGER__EXPLAIN_TAGS`` is on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.events import EvidenceTerm, Tag, TagEvidence, TagOrigin, TagSource
from shared.tagmodel.card import ModelCard
from shared.tagmodel.decide import ZeroShotTags
from shared.tagmodel.head import MarginParts, TagHead

DEFAULT_TOP_TERMS = 5
_DECIMALS = 4


def _r(x: float) -> float:
    return round(float(x), _DECIMALS)


def model_evidence(parts: MarginParts) -> TagEvidence:
    """A model tag's evidence from its margin's parts."""
    return TagEvidence(
        origin=TagOrigin.MODEL,
        terms=[EvidenceTerm(term=t[:200], weight=_r(w)) for t, w in parts.terms],
        embedding_share=_r(parts.embedding_share),
        lexical=_r(parts.lexical), embedding=_r(parts.embedding), bias=_r(parts.bias),
    )  # fmt: skip


def _cosine(embedding: np.ndarray, other: np.ndarray) -> float:
    a = np.asarray(embedding, dtype=np.float64).reshape(-1)
    b = np.asarray(other, dtype=np.float64).reshape(-1)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.clip(a @ b / denom, -1.0, 1.0)) if denom > 0 else 0.0


def _imply(
    tags: Sequence[Tag], own: dict[str, TagEvidence], fired: set[str], parents: dict[str, str | None]
) -> list[Tag]:
    """Attach evidence; a tag that did not fire on its own is implied by its best fired descendant."""
    out = []
    for tag in tags:
        evidence = own.get(tag.tag_id)
        if tag.tag_id not in fired and tag.source != TagSource.EXPLORATORY:
            descendants = [t for t in tags if t.tag_id in fired and _is_ancestor(tag.tag_id, t.tag_id, parents)]
            if descendants:
                best = max(descendants, key=lambda t: (t.score, t.tag_id))
                base = evidence.model_dump() if evidence is not None else {}
                evidence = TagEvidence(**{**base, "origin": TagOrigin.HIERARCHY, "implied_by": best.tag_id})
        out.append(tag.model_copy(update={"evidence": evidence}) if evidence is not None else tag)
    return out


def _is_ancestor(ancestor: str, tag_id: str, parents: dict[str, str | None]) -> bool:
    node, seen = parents.get(tag_id), 0
    while node is not None and seen < 64:
        if node == ancestor:
            return True
        node, seen = parents.get(node), seen + 1
    return False


def explain_tags(
    tags: Sequence[Tag],
    text: str,
    embedding: np.ndarray,
    card: ModelCard,
    head: TagHead,
    zero_shot: ZeroShotTags | None = None,
    top_k: int = DEFAULT_TOP_TERMS,
) -> list[Tag]:
    """``tags`` of one listing (from :func:`~shared.tagmodel.decide.tags_from_probs`) with their evidence.

    Parameters
    ----------
    tags : Sequence[Tag]
        The listing's tags, in their order (kept).
    text, embedding
        What the model read (``model_text``) and the listing's ``EMBEDDING``.
    card, head
        The version that produced the tags: its vocabulary, thresholds, temperature and head.
    zero_shot : ZeroShotTags or None
        The cold-start tags that were scored with the model, if any.
    top_k : int
        Terms kept per tag.
    """
    index = card.tag_index()
    parents: dict[str, str | None] = {v.tag_id: v.parent for v in card.vocabulary}
    own: dict[str, TagEvidence] = {}
    fired: set[str] = set()
    model_tags = [t for t in tags if t.tag_id in index and t.source in (TagSource.MODEL, TagSource.EXPLORATORY)]
    columns = [index[t.tag_id] for t in model_tags]
    for tag, j, parts in zip(model_tags, columns, head.explain(text, embedding, columns, top_k), strict=True):
        own[tag.tag_id] = model_evidence(parts)
        if 1.0 / (1.0 + np.exp(-parts.margin / card.temperature)) >= card.thresholds[j]:
            fired.add(tag.tag_id)
    if zero_shot is not None:
        zs_index = {e.tag_id: i for i, e in enumerate(zero_shot.entries)}
        parents.update({e.tag_id: e.parent for e in zero_shot.entries if e.tag_id not in parents})
        for tag in tags:
            i = zs_index.get(tag.tag_id)
            if tag.source != TagSource.ZERO_SHOT or i is None:
                continue
            sim = _cosine(embedding, zero_shot.embeddings[i])
            own[tag.tag_id] = TagEvidence(origin=TagOrigin.ZERO_SHOT, similarity=_r(sim))
            if zero_shot.scores(np.asarray(embedding).reshape(1, -1))[0, i] >= 0.5:
                fired.add(tag.tag_id)
    return _imply(tags, own, fired, parents)


def explain_zero_shot(tags: Sequence[Tag], embedding: np.ndarray, label_embeddings: dict[str, np.ndarray]) -> list[Tag]:
    """Evidence of a zero-shot-only tagger's tags: the picked category, and its ancestors as implied by it.

    ``label_embeddings`` maps a tag's ``taxonomy_id`` to its name's embedding.
    """
    own: dict[str, TagEvidence] = {}
    parents: dict[str, str | None] = {}
    by_taxonomy = {t.taxonomy_id: t.tag_id for t in tags if t.taxonomy_id}
    for t in tags:
        tax_id = t.taxonomy_id or ""
        head, sep, _ = tax_id.rpartition("-")
        parents[t.tag_id] = by_taxonomy.get(head) if sep else None
        if tax_id in label_embeddings:
            sim = _cosine(embedding, label_embeddings[tax_id])
            own[t.tag_id] = TagEvidence(origin=TagOrigin.ZERO_SHOT, similarity=_r(sim))
    has_child = {p for p in parents.values() if p is not None}
    fired = {t.tag_id for t in tags if t.tag_id not in has_child}
    return _imply(tags, own, fired, parents)
