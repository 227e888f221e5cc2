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
Exploratory labels are weighted by the inverse of the probability that the tag was explored
(inverse propensity) to undo that. That probability is ``share`` only while the per-listing cap
(``exploration_max_tags_per_listing``) is out of reach; a listing with many below-threshold
candidates explores each of them less often (:func:`shared.canary.exploration_propensity`), so
:func:`exploration_weights` recounts each explored listing's candidates with the version that
tagged it. The weights are clipped (``gate_explored_max_weight``, 10): unclipped, a demo run's recent score
hung on a few explored labels weighing ~30 each (both models scored 0.14).

Embeddings go through the job's :class:`~services.trainer.embeddings.EmbeddingCache`: a
candidate that kept the champion's encoder is scored without embedding anything twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from services.trainer.embeddings import EmbeddingCache, embed_texts, served_encoder
from services.trainer.evaluate import tag_metrics
from services.trainer.feedback_labels import Label
from services.trainer.gate import GoldenMetrics, ModelScores, SliceMetric
from services.trainer.job_input import FastJobInput, JobRecord, label_arrays
from shared.canary import exploration_propensity, unit_hash
from shared.events import TagKind
from shared.settings import TrainerSettings
from shared.tagmodel.card import load_model_card
from shared.tagmodel.decide import decide


def is_recent_holdout(listing_id: str, share: float, salt: str = "recent-holdout") -> bool:
    """Whether a listing's feedback labels are kept out of training to judge candidates (stable)."""
    return unit_hash(salt, listing_id) < share


def probabilities(version_dir: Path, texts: Sequence[str], cache: EmbeddingCache | None = None) -> np.ndarray:
    """The version's calibrated tag probabilities ``[n, n_tags]`` for ``texts``, as served."""
    encoder = served_encoder(version_dir)
    card = encoder.runtime.card
    if not texts:
        return np.zeros((0, len(card.vocabulary)))
    embeddings = embed_texts(encoder, list(texts), cache)
    logits = encoder.runtime.head.logits(list(texts), embeddings)
    return np.asarray(1.0 / (1.0 + np.exp(-logits / card.temperature)))


def decisions(version_dir: Path, texts: Sequence[str], cache: EmbeddingCache | None = None) -> np.ndarray:
    """The version's tag decisions ``[n, n_tags]`` (bool) for ``texts``, as served."""
    pred, _ = decide(probabilities(version_dir, texts, cache), load_model_card(version_dir))
    return np.asarray(pred, dtype=bool)


def exploration_weights(
    version_dir: Path, labels: Sequence[Label], texts: Mapping[str, str], cfg: TrainerSettings,
    cache: EmbeddingCache | None = None, logged_by: Callable[[str], Path | None] | None = None,
) -> dict[tuple[str, str], float]:
    """``1 / p(explored)`` of each exploratory label, clipped at ``gate_explored_max_weight``.

    The candidates of a listing are its tags scored in [``exploration_min_score``, threshold)
    (:func:`shared.tagmodel.decide.exploratory_tags`); the explored tag is one of them. They are
    recounted with the version that tagged the listing (``logged_by(label.model_version)``: its
    directory, None when it is gone) and with ``version_dir`` (the champion) where that is unknown:
    a listing tagged by an earlier champion, or by a canary, explored among *that* version's
    candidates, and recounting them with today's champion misweighs its label.
    """
    explored = [x for x in labels if x.exploratory and x.listing_id in texts]
    if not explored or cfg.exploration_share <= 0:
        return {}
    by_logger: dict[Path, list[Label]] = {}
    for x in explored:
        logger = logged_by(x.model_version) if logged_by is not None and x.model_version is not None else None
        by_logger.setdefault(logger or version_dir, []).append(x)
    weights: dict[tuple[str, str], float] = {}
    for logger, group in by_logger.items():
        card = load_model_card(logger)
        listings = sorted({x.listing_id for x in group})
        probs = probabilities(logger, [texts[lid] for lid in listings], cache)
        shown, _ = decide(probs, card)
        thresholds = np.asarray(card.thresholds, dtype=np.float64)
        candidates = ((probs >= cfg.exploration_min_score) & (probs < thresholds) & ~shown).sum(axis=1)
        count = dict(zip(listings, candidates.tolist(), strict=True))
        weights.update({
            x.key: min(cfg.gate_explored_max_weight, 1.0 / exploration_propensity(
                max(count[x.listing_id], 1), cfg.exploration_share, cfg.exploration_max_tags_per_listing))
            for x in group
        })  # fmt: skip
    return weights


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


def weighted_f1(
    said: Callable[[Label], bool], labels: Sequence[Label], exploration_share: float = 0.0,
    explored_weights: Mapping[tuple[str, str], float] | None = None,
) -> float | None:
    """F1 of decisions ``said(label)`` against weighted labels, exploratory ones weighted ``1/share``
    (or by ``explored_weights[(listing, tag)]`` where given: :func:`exploration_weights`).

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
    explored_weights = explored_weights or {}
    for x in labels:
        weight = x.weight * (explored_weights.get(x.key, explored_weight) if x.exploratory else 1.0)
        positive = said(x)
        if positive and x.label:
            tp += weight
        elif positive:
            fp += weight
        elif x.label:
            fn += weight
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else None


def recent_score(
    version_dir: Path, labels: Sequence[Label], texts: Mapping[str, str], cache: EmbeddingCache | None = None,
    exploration_share: float = 0.0, explored_weights: Mapping[tuple[str, str], float] | None = None,
) -> tuple[float | None, int]:
    """:func:`weighted_f1` of the version's decisions against feedback labels; (None, 0) without any."""
    index = {e.tag_id: j for j, e in enumerate(load_model_card(version_dir).vocabulary)}
    usable = [x for x in labels if x.listing_id in texts and x.tag_id in index]
    if not usable:
        return None, 0
    listings = sorted({x.listing_id for x in usable})
    row = {lid: i for i, lid in enumerate(listings)}
    pred = decisions(version_dir, [texts[lid] for lid in listings], cache)

    def said(x: Label) -> bool:
        return bool(pred[row[x.listing_id], index[x.tag_id]])

    return weighted_f1(said, usable, exploration_share, explored_weights), len(usable)


def score(
    version_dir: Path, golden: Sequence[JobRecord], recent: Sequence[Label], texts: Mapping[str, str],
    cache: EmbeddingCache | None = None, exploration_share: float = 0.0,
    explored_weights: Mapping[tuple[str, str], float] | None = None,
) -> ModelScores:
    """What the gate compares: golden metrics and the recent-feedback score of one version."""
    value, n = recent_score(version_dir, recent, texts, cache, exploration_share, explored_weights)
    return ModelScores(golden=golden_metrics(version_dir, golden, cache), recent=value, recent_examples=n)
