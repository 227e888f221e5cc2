"""From model outputs to tags: thresholds, hierarchy closure, taxonomy restriction, zero-shot. Pure.

Deterministic by construction: the same ``probs``/``embeddings`` and model card give the same
tags in the same order with the same (6-decimal) scores, so a tagger's output is byte-identical
for a given listing version and model version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.events import Tag, TagKind, TagSource
from shared.tagmodel.card import ModelCard, VocabEntry

SCORE_DECIMALS = 6


@dataclass(frozen=True)
class ZeroShotTags:
    """Cold-start tags scored by cosine similarity between a listing's embedding and the tag's name.

    ``embeddings`` are the L2-normalised embeddings of each entry's name, computed with the same
    model that produces the listings' ``EMBEDDING`` (e.g. by sending the names through Triton).
    A similarity of ``threshold`` maps to score 0.5; ``scale`` sets how fast the score moves.
    """

    entries: tuple[VocabEntry, ...]
    embeddings: np.ndarray  # [m, dim]
    threshold: float = 0.5
    scale: float = 20.0

    @classmethod
    def from_card(cls, card: ModelCard, entries: Sequence[VocabEntry], embeddings: np.ndarray) -> ZeroShotTags:
        """Cold-start tags with the zero-shot calibration fitted for the model version ``card``."""
        return cls(tuple(entries), np.asarray(embeddings), card.zero_shot_threshold, card.zero_shot_scale)

    def scores(self, listing_embeddings: np.ndarray) -> np.ndarray:
        """``[n, m]`` calibrated scores: ``sigmoid(scale * (cosine - threshold))``."""
        sims = np.asarray(listing_embeddings, dtype=np.float64) @ np.asarray(self.embeddings, np.float64).T
        return 1.0 / (1.0 + np.exp(-self.scale * (sims - self.threshold)))


def parent_index(vocab: Sequence[VocabEntry]) -> np.ndarray:
    """``[n_tags]`` index of each tag's parent in ``vocab`` (-1: roots, attributes, unknown parents)."""
    index = {v.tag_id: i for i, v in enumerate(vocab)}
    return np.array([index.get(v.parent, -1) if v.parent else -1 for v in vocab], dtype=np.int64)


def close_hierarchy(pred: np.ndarray, scores: np.ndarray, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Add every ancestor of a predicted tag; an ancestor's score is at least its best descendant's.

    Parameters
    ----------
    pred : np.ndarray
        ``bool [n, n_tags]`` decisions.
    scores : np.ndarray
        ``float [n, n_tags]`` scores.
    parents : np.ndarray
        ``int [n_tags]`` from :func:`parent_index`.

    Returns
    -------
    (np.ndarray, np.ndarray)
        Closed decisions and the adjusted scores (new arrays).
    """
    pred = pred.copy()
    scores = scores.astype(np.float64, copy=True)
    # Walk up one level per pass; depth is small (<= a handful), so this converges fast.
    children = np.flatnonzero(parents >= 0)
    for _ in range(64):
        changed = False
        for j in children:
            p = parents[j]
            rows = pred[:, j]
            if not rows.any():
                continue
            missing = rows & ~pred[:, p]
            lower = rows & (scores[:, p] < scores[:, j])
            if missing.any() or lower.any():
                changed = True
                pred[:, p] |= rows
                scores[lower, p] = scores[lower, j]
        if not changed:
            break
    return pred, scores


def decide(probs: np.ndarray, card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """Thresholded decisions with hierarchy closure: ``(pred bool [n, n_tags], scores [n, n_tags])``."""
    thresholds = np.asarray(card.thresholds, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    return close_hierarchy(probs >= thresholds, probs, parent_index(card.vocabulary))


def _allowed_handles(entries: Sequence[VocabEntry], picked: Sequence[tuple[int, float]]) -> set[str] | None:
    """Attribute handles allowed by the deepest predicted category that maps to the taxonomy."""
    mapped = [
        (entries[j].level, s, entries[j].tag_id, j) for j, s in picked if entries[j].allowed_attributes is not None
    ]
    if not mapped:
        return None
    _, _, _, j = max(mapped, key=lambda m: (m[0], m[1], m[2]))
    return set(entries[j].allowed_attributes or ())


def _tag(entry: VocabEntry, score: float, source: TagSource) -> Tag:
    return Tag(
        tag_id=entry.tag_id,
        name=entry.name,
        kind=entry.kind,
        score=round(min(max(float(score), 0.0), 1.0), SCORE_DECIMALS),
        source=source,
        name_zh=entry.name_zh,
        taxonomy_id=entry.taxonomy_id,
    )


# Cold-start guesses per listing, at most: a badly calibrated version must not tag a listing
# with half the taxonomy (a tag event holds at most 1,000 tags).
MAX_ZERO_SHOT_TAGS = 5


def _top_k(pred: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """``pred`` with at most the ``k`` best-scored true cells per row kept.

    >>> _top_k(np.array([[True, True, True, False]]), np.array([[0.6, 0.9, 0.7, 0.99]]), 2).tolist()
    [[False, True, True, False]]
    """
    if pred.shape[1] <= k:
        return pred
    masked = np.where(pred, scores, -np.inf)
    best = np.argpartition(-masked, k - 1, axis=1)[:, :k]
    out = np.zeros_like(pred)
    np.put_along_axis(out, best, True, axis=1)
    return out & pred


def tags_from_probs(
    probs: np.ndarray,
    card: ModelCard,
    embeddings: np.ndarray | None = None,
    zero_shot: ZeroShotTags | None = None,
) -> list[list[Tag]]:
    """Tags of each listing from the model's calibrated ``PROBS`` (and ``EMBEDDING`` for zero-shot).

    Parameters
    ----------
    probs : np.ndarray
        ``[n, n_tags]`` in the card's vocabulary order.
    card : ModelCard
        Vocabulary, thresholds and taxonomy mapping of the model version that produced ``probs``.
    embeddings : np.ndarray or None
        ``[n, dim]`` listing embeddings; needed only with ``zero_shot``.
    zero_shot : ZeroShotTags or None
        Cold-start tags; those whose id is in the model vocabulary are skipped (the model knows them).

    Returns
    -------
    list[list[Tag]]
        Per listing, tags sorted by ``(kind, -score, tag_id)``: every predicted category's
        ancestors are present, and when a predicted category maps to the taxonomy only the
        attributes it allows are kept (attributes with no taxonomy mapping always are).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[0] == 0:  # no listings (Triton answers an empty request with 0 x 0 outputs)
        return []
    probs = np.atleast_2d(probs)
    if probs.shape[1] != len(card.vocabulary):
        raise ValueError(f"probs has {probs.shape[1]} columns, the card's vocabulary {len(card.vocabulary)} tags")
    entries: list[VocabEntry] = list(card.vocabulary)
    scores = probs
    pred = probs >= np.asarray(card.thresholds, dtype=np.float64)
    sources = [TagSource.MODEL] * len(entries)
    if zero_shot is not None and embeddings is not None and len(zero_shot.entries):
        known = {v.tag_id for v in entries}
        keep = [i for i, e in enumerate(zero_shot.entries) if e.tag_id not in known]
        zs = zero_shot.scores(np.atleast_2d(embeddings))[:, keep]
        entries += [zero_shot.entries[i] for i in keep]
        sources += [TagSource.ZERO_SHOT] * len(keep)
        scores = np.concatenate([scores, zs], axis=1)
        pred = np.concatenate([pred, _top_k(zs >= 0.5, zs, MAX_ZERO_SHOT_TAGS)], axis=1)
    pred, scores = close_hierarchy(pred, scores, parent_index(entries))
    is_cat = np.array([e.kind == TagKind.CATEGORY for e in entries], dtype=bool)
    out: list[list[Tag]] = []
    for r in range(probs.shape[0]):
        picked = [(int(j), float(scores[r, j])) for j in np.flatnonzero(pred[r])]
        allowed = _allowed_handles(entries, [(j, s) for j, s in picked if is_cat[j]])
        tags = [
            _tag(entries[j], s, sources[j])
            for j, s in picked
            if is_cat[j]
            or allowed is None
            or entries[j].attribute_handle is None
            or entries[j].attribute_handle in allowed
        ]
        tags.sort(key=lambda t: (t.kind.value, -t.score, t.tag_id))
        out.append(tags)
    return out


def exploratory_tags(
    probs_row: np.ndarray, card: ModelCard, listing_id: str, shown: set[str], share: float, max_n: int,
    min_score: float, salt: str,
) -> list[Tag]:
    """Below-threshold candidate tags of one listing to publish as exploratory (``source="exploratory"``).

    Feedback only speaks of tags that were shown: publishing a few uncertain candidates lets
    merchants and shoppers confirm tags the model would have missed (recall). Candidates score
    at least ``min_score`` and under their threshold; :func:`shared.canary.exploratory_pick`
    chooses among them deterministically by listing.
    """
    from shared.canary import exploratory_pick

    thresholds = np.asarray(card.thresholds, dtype=np.float64)
    entries = card.vocabulary
    by_id = {e.tag_id: j for j, e in enumerate(entries)}
    candidates = [
        e.tag_id for j, e in enumerate(entries)
        if min_score <= probs_row[j] < thresholds[j] and e.tag_id not in shown
    ]
    picked = exploratory_pick(listing_id, candidates, share, max_n, salt)
    return [_tag(entries[by_id[t]], float(probs_row[by_id[t]]), TagSource.EXPLORATORY) for t in picked]
