"""Score a model version on the gate's two sets, in process, with the very code Triton runs.

* the **golden holdout**: labelled listings never trained on (fixed for the life of a model
  line), scored like ``tagloop eval tags`` (category micro/macro-F1, coverage, per-tag F1);
* the **recent-feedback holdout**: feedback labels of listings kept out of training (by a
  hash of the listing id), scored as the weighted F1 of the version's decisions on the
  labelled (listing, tag) cells.

Embeddings go through the job's :class:`~services.trainer.embeddings.EmbeddingCache`: a
candidate that kept the champion's encoder is scored without embedding anything twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def recent_score(
    version_dir: Path, labels: Sequence[Label], texts: Mapping[str, str], cache: EmbeddingCache | None = None
) -> tuple[float | None, int]:
    """Weighted F1 of the version's decisions against feedback labels; (None, 0) without any."""
    index = {e.tag_id: j for j, e in enumerate(load_model_card(version_dir).vocabulary)}
    usable = [x for x in labels if x.listing_id in texts and x.tag_id in index]
    if not usable:
        return None, 0
    listings = sorted({x.listing_id for x in usable})
    row = {lid: i for i, lid in enumerate(listings)}
    pred = decisions(version_dir, [texts[lid] for lid in listings], cache)
    tp = fp = fn = 0.0
    for x in usable:
        said = bool(pred[row[x.listing_id], index[x.tag_id]])
        if said and x.label:
            tp += x.weight
        elif said:
            fp += x.weight
        elif x.label:
            fn += x.weight
    denom = 2 * tp + fp + fn
    return (2 * tp / denom if denom else None), len(usable)


def score(
    version_dir: Path, golden: Sequence[JobRecord], recent: Sequence[Label], texts: Mapping[str, str],
    cache: EmbeddingCache | None = None,
) -> ModelScores:
    """What the gate compares: golden metrics and the recent-feedback score of one version."""
    value, n = recent_score(version_dir, recent, texts, cache)
    return ModelScores(golden=golden_metrics(version_dir, golden, cache), recent=value, recent_examples=n)
