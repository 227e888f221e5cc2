"""Multi-label metrics of tag decisions, overall, per hierarchy level and for attributes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.events import TagKind
from shared.tagmodel.card import VocabEntry


def prf(y: np.ndarray, pred: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Micro/macro F1, precision and recall of ``pred`` against ``y`` over the unmasked cells.

    Macro-F1 averages over tags with at least one true or predicted example in the evaluated set
    (a tag absent from both has no defined F1 and is skipped, for every system alike).
    """
    mask = np.ones_like(y, dtype=bool) if mask is None else mask > 0
    yt = (y > 0) & mask
    yp = pred.astype(bool) & mask
    tp = (yt & yp).sum(axis=0).astype(np.float64)
    fp = (~yt & yp).sum(axis=0).astype(np.float64)
    fn = (yt & ~yp).sum(axis=0).astype(np.float64)
    precision = tp.sum() / max(tp.sum() + fp.sum(), 1.0)
    recall = tp.sum() / max(tp.sum() + fn.sum(), 1.0)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1.0)
    active = (tp + fp + fn) > 0
    macro = float(np.mean(2 * tp[active] / (2 * tp[active] + fp[active] + fn[active]))) if active.any() else 0.0
    return {
        "micro_f1": round(float(micro), 4),
        "macro_f1": round(macro, 4),
        "precision": round(float(precision), 4),
        "recall": round(float(recall), 4),
    }


def tag_metrics(y: np.ndarray, pred: np.ndarray, mask: np.ndarray, vocab: Sequence[VocabEntry]) -> dict[str, Any]:
    """Category metrics (headline), per category level, attribute metrics and coverage."""
    is_cat = np.array([v.kind == TagKind.CATEGORY for v in vocab], dtype=bool)
    levels = np.array([v.level for v in vocab])
    cat = prf(y[:, is_cat], pred[:, is_cat], mask[:, is_cat])
    out: dict[str, Any] = dict(cat)
    # Coverage: listings with at least one confident tag of any kind.
    out["coverage"] = round(float((pred & (mask > 0)).any(axis=1).mean()) if len(pred) else 0.0, 4)
    out["levels"] = {
        str(lvl): prf(
            y[:, is_cat & (levels == lvl)],
            pred[:, is_cat & (levels == lvl)],
            mask[:, is_cat & (levels == lvl)],
        )
        for lvl in sorted(set(levels[is_cat].tolist()))
    }
    if (~is_cat).any():
        rows = mask[:, ~is_cat].any(axis=1)
        out["attributes"] = prf(y[rows][:, ~is_cat], pred[rows][:, ~is_cat], mask[rows][:, ~is_cat])
        out["attributes"]["n_listings"] = int(rows.sum())
    return out
