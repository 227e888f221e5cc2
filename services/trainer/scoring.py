"""Score a model version on the gate's two sets, in process, with the very code Triton runs.

* the **golden holdout**: labelled listings never trained on (fixed for the life of a model
  line), scored like ``tagloop eval tags`` (category micro/macro-F1, coverage, per-tag F1);
* the **recent-feedback holdout**: feedback labels of listings kept out of training (by a
  hash of the listing id), scored as the weighted F1 of the version's decisions on the
  labelled (listing, tag) cells.

The champion chose which cells got feedback: every tag it showed is judged, but of the tags it
left out only the explored ones, each picked with probability ``exploration_share``
(:func:`shared.canary.exploratory_pick`). Unweighted, the recent score therefore counts the
champion's misses ``1/share`` times too rarely and favours it over any candidate that learnt
from feedback (measured: a candidate +3.5 golden micro-F1 points better scored 0.06 lower).
Exploratory labels are weighted by ``1/share`` (inverse propensity) to undo that.

Embeddings go through the job's :class:`~services.trainer.embeddings.EmbeddingCache`: a
candidate that kept the champion's encoder is scored without embedding anything twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from services.trainer.embeddings import EmbeddingCache, VersionEncoder, embed_texts
from services.trainer.evaluate import tag_metrics
from services.trainer.feedback_labels import Label
from services.trainer.gate import GoldenMetrics, ModelScores, SliceMetric
from services.trainer.job_input import FastJobInput, JobRecord, label_arrays
from shared.canary import unit_hash
from shared.events import TagKind
from shared.tagmodel.card import load_model_card
from shared.tagmodel.decide import decide
from shared.tagmodel.head import TagHead


def is_recent_holdout(listing_id: str, share: float = 0.2, salt: str = "recent-holdout") -> bool:
    """Whether a listing's feedback labels are kept out of training to judge candidates (stable)."""
    return unit_hash(salt, listing_id) < share


def decisions(version_dir: Path, texts: Sequence[str], cache: EmbeddingCache | None = None) -> np.ndarray:
    """The version's tag decisions ``[n, n_tags]`` (bool) for ``texts``, as served."""
    card = load_model_card(version_dir)
    if not texts:
        return np.zeros((0, len(card.vocabulary)), dtype=bool)
    embeddings = embed_texts(VersionEncoder(version_dir), list(texts), cache)
    logits = TagHead.load(version_dir).logits(list(texts), embeddings)
    probs = 1.0 / (1.0 + np.exp(-logits / card.temperature))
    pred, _ = decide(probs, card)
    return np.asarray(pred, dtype=bool)


def golden_metrics(
    version_dir: Path, golden: Sequence[JobRecord], cache: EmbeddingCache | None = None
) -> GoldenMetrics:
    """Category metrics and per-tag F1 (with support) on the golden holdout."""
    vocab = load_model_card(version_dir).vocabulary
    arrays = label_arrays(FastJobInput(list(golden)), vocab)
    pred = decisions(version_dir, [r.text for r in golden], cache)
    metrics = tag_metrics(arrays.y, pred, arrays.mask, vocab)
    per_tag: dict[str, SliceMetric] = {}
    for j, entry in enumerate(vocab):
        if entry.kind != TagKind.CATEGORY:
            continue
        known = arrays.mask[:, j] > 0
        y, p = arrays.y[known, j] > 0.5, pred[known, j]
        tp, support = int((y & p).sum()), int(y.sum())
        denom = support + int(p.sum())
        per_tag[entry.tag_id] = SliceMetric(f1=(2 * tp / denom) if denom else 1.0, support=support)
    return GoldenMetrics(micro_f1=float(metrics["micro_f1"]), macro_f1=float(metrics["macro_f1"]),
                         coverage=float(metrics["coverage"]), per_tag=per_tag)


def weighted_f1(said: Callable[[Label], bool], labels: Sequence[Label], exploration_share: float = 0.0) -> float | None:
    """F1 of decisions ``said(label)`` against weighted labels, exploratory ones weighted ``1/share``.

    ``None`` when there is nothing to score. A champion that showed ``t1`` (judged right) and
    missed ``t2`` (explored and judged right) against a candidate saying both:

    >>> from services.trainer.feedback_labels import LabelKind
    >>> labels = [Label("l1", "t1", 1, 1.0, LabelKind.WEAK), Label("l1", "t2", 1, 1.0, LabelKind.WEAK, True)]
    >>> round(weighted_f1(lambda x: x.tag_id == "t1", labels, exploration_share=0.25), 3)
    0.333
    >>> weighted_f1(lambda x: True, labels, exploration_share=0.25)
    1.0
    """
    explored_weight = 1.0 / exploration_share if exploration_share > 0 else 1.0
    tp = fp = fn = 0.0
    for x in labels:
        weight = x.weight * (explored_weight if x.exploratory else 1.0)
        if said(x) and x.label:
            tp += weight
        elif said(x):
            fp += weight
        elif x.label:
            fn += weight
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else None


def recent_score(
    version_dir: Path, labels: Sequence[Label], texts: Mapping[str, str], cache: EmbeddingCache | None = None,
    exploration_share: float = 0.0,
) -> tuple[float | None, int]:
    """:func:`weighted_f1` of the version's decisions against feedback labels; (None, 0) without any."""
    index = {e.tag_id: j for j, e in enumerate(load_model_card(version_dir).vocabulary)}
    usable = [x for x in labels if x.listing_id in texts and x.tag_id in index]
    if not usable:
        return None, 0
    listings = sorted({x.listing_id for x in usable})
    row = {lid: i for i, lid in enumerate(listings)}
    pred = decisions(version_dir, [texts[lid] for lid in listings], cache)
    return weighted_f1(lambda x: bool(pred[row[x.listing_id], index[x.tag_id]]), usable, exploration_share), len(usable)


def score(
    version_dir: Path, golden: Sequence[JobRecord], recent: Sequence[Label], texts: Mapping[str, str],
    cache: EmbeddingCache | None = None, exploration_share: float = 0.0,
) -> ModelScores:
    """What the gate compares: golden metrics and the recent-feedback score of one version."""
    value, n = recent_score(version_dir, recent, texts, cache, exploration_share)
    return ModelScores(golden=golden_metrics(version_dir, golden, cache), recent=value, recent_examples=n)
