"""`tagloop eval tags`: the trained model and the TF-IDF + SVM baseline on the same test split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from services.trainer.baseline import TfidfSvmBaseline
from services.trainer.evaluate import tag_metrics
from services.trainer.model import load_tokenizer
from services.trainer.train import METRICS_FILE, load_trained, prepare, score
from shared.tagmodel.card import ModelCard
from shared.tagmodel.decide import close_hierarchy, decide, parent_index


def evaluate_run(out: Path, write: bool = True) -> dict[str, Any]:
    """Metrics of the run in ``out`` and of the baseline, both on that run's test split.

    The split is rebuilt from the saved config (it is a pure function of the data and seed), and
    the data fingerprint is checked against the one the model was calibrated on.

    Returns
    -------
    dict
        ``micro_f1``, ``macro_f1``, ``precision``, ``recall``, ``coverage``, ``levels`` (category
        tags) and ``attributes`` for the model; ``baseline_*`` the same for the baseline;
        ``n_test``, ``n_tags``, ``n_category_tags``, ``n_attribute_tags``, ``data_fingerprint``.
    """
    config, vocab, model, head, calibration = load_trained(out)
    prep = prepare(config)
    if prep.fingerprint != calibration["fingerprint"]:
        raise ValueError("the data changed since this model was trained (fingerprint mismatch)")
    card = ModelCard(
        model_name="eval", version=0, vocabulary=vocab, thresholds=calibration["thresholds"],
        temperature=calibration["temperature"], data_fingerprint=prep.fingerprint,
    )  # fmt: skip
    test, train = prep.split.test, prep.split.train
    texts = [r.text for r in prep.records]
    logits, _ = score(model, head, load_tokenizer(), [texts[i] for i in test], config.max_length)
    probs = 1.0 / (1.0 + np.exp(-logits / card.temperature))
    pred, _ = decide(probs, card)
    y, mask = prep.y[test], prep.mask[test]
    ours = tag_metrics(y, pred, mask, vocab)

    baseline = TfidfSvmBaseline(seed=config.seed).fit([texts[i] for i in train], prep.y[train], prep.mask[train])
    margins = baseline.decision_function([texts[i] for i in test])
    # Same output contract as the model: a predicted category implies its ancestors.
    base_pred, _ = close_hierarchy(margins > 0, margins, parent_index(vocab))
    theirs = tag_metrics(y, base_pred, mask, vocab)

    result: dict[str, Any] = {**ours}
    result.update({f"baseline_{k}": v for k, v in theirs.items()})
    result.update(
        n_test=len(test), n_train=len(train), n_val=len(prep.split.val), n_tags=len(vocab),
        n_category_tags=sum(v.kind == "category" for v in vocab),
        n_attribute_tags=sum(v.kind == "attribute" for v in vocab),
        data_fingerprint=prep.fingerprint, max_depth=config.max_depth, min_count=config.min_count,
        target_precision=config.target_precision,
    )  # fmt: skip
    if write:
        (Path(out) / METRICS_FILE).write_text(json.dumps(result, indent=2))
    return result
