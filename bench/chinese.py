"""The Chinese check (issue 11 §3): tag unseen Shopify category names with their ancestors.

The catalog is the taxonomy itself: every category's name is a listing text, labelled with its
path (:func:`taxonomy_name_records`). The leak-free split groups by normalised name, so the test
side holds category names the head never saw, and the task is to place each one under its
level-1 and level-2 ancestors (``max_depth=2``). The same run on the English names is the
reference. Systems, on the same split:

* ``baseline (words)``: TF-IDF + linear SVM with the word analyser every version used before
  CJK support (a run of Chinese characters is one token);
* ``baseline``: the same with today's analyser (character 1-2 grams inside CJK runs);
* ``model``: ``tagloop train --quick``'s fit (:func:`services.trainer.fast_job.fit_version`):
  lexical block + the pretrained MiniLM embedding, thresholds tuned on the validation side;
* ``zero-shot``: cosine similarity to the taxonomy's names in the text's language (depth <= 2),
  and, for the Chinese texts, to the English names (what MiniLM was trained on).

Run: ``python -m bench.chinese [--data ../shared/data] [--cache DIR]`` (a few minutes on 2 cores;
prints JSON). Results: ``bench/results/chinese.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.catalog.records import CATEGORY_SEP, Record
from shared.taxonomy import Taxonomy


def taxonomy_name_records(tax: Taxonomy, locale: str = "zh-CN", roots: set[str] | None = None) -> list[Record]:
    """One record per category: its name in ``locale`` (``zh-CN`` or ``en``) labelled with its path."""
    chinese = locale.lower().startswith("zh")
    cats = sorted(tax.categories.values(), key=lambda c: c.id)
    return [
        Record(c.id, c.name_zh if chinese else c.name, (CATEGORY_SEP.join(c.path_zh if chinese else c.path),))
        for c in cats
        if roots is None or c.id.split("-", 1)[0] in roots
    ]


def _zero_shot_pred(tax: Taxonomy, idx: list[int], emb: np.ndarray, encoder: Any, locale: str, label_locale: str,
                    vocab: list[Any]) -> np.ndarray:
    """Zero-shot's top category (with its ancestors) of each test text, as columns of ``vocab``.

    The labels embedded are the taxonomy's names in ``label_locale``; ``vocab`` is in ``locale``.
    """
    from shared.tagmodel.tag_ids import category_tag_id
    from shared.tagmodel.zero_shot import ZeroShotTagger, is_chinese

    tagger = ZeroShotTagger.build(tax, encoder.encode, max_depth=2, locale=label_locale)
    column = {v.tag_id: j for j, v in enumerate(vocab)}
    pred = np.zeros((len(idx), len(vocab)), dtype=bool)
    for r, tags in enumerate(tagger.tag(emb[idx])):
        for t in tags:
            cat = tax.categories[t.taxonomy_id or ""]
            path = cat.path_zh if is_chinese(locale) else cat.path
            j = column.get(category_tag_id(path))
            if j is not None:
                pred[r, j] = True
    return pred


def run_language(tax: Taxonomy, locale: str, encoder: Any, cache: Any, max_depth: int = 2) -> dict[str, Any]:
    """Every system of the module on the names in ``locale``: test metrics, sizes, seconds."""
    from services.trainer.baseline import TfidfSvmBaseline
    from services.trainer.embeddings import embed_texts
    from services.trainer.evaluate import tag_metrics
    from services.trainer.fast_job import fit_version
    from services.trainer.job_input import FastJobInput, records_from_catalog
    from services.trainer.labels import build_vocabulary, label_matrix
    from services.trainer.split import group_split
    from services.trainer.train import TrainConfig
    from shared.tagmodel.analyzer import WORDS, WORDS_CJK

    config = TrainConfig(max_depth=max_depth)
    records = taxonomy_name_records(tax, locale)
    split = group_split(records, config.val_frac, config.test_frac, config.seed)
    vocab = build_vocabulary([records[i] for i in split.train], max_depth, config.min_count)
    y, mask = label_matrix(records, vocab)
    train, test = split.train, split.test
    texts = [r.text for r in records]
    out: dict[str, Any] = {"n_train": len(train), "n_val": len(split.val), "n_test": len(test), "n_tags": len(vocab)}

    def keep(metrics: dict[str, Any], started: float) -> dict[str, Any]:
        levels = {k: v["micro_f1"] for k, v in metrics["levels"].items()}
        return {**{k: metrics[k] for k in ("micro_f1", "macro_f1", "precision", "recall", "coverage")},
                "level_micro_f1": levels, "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip

    for name, analyzer in (("baseline (words)", WORDS), ("baseline", WORDS_CJK)):
        started = time.perf_counter()
        base = TfidfSvmBaseline(analyzer=analyzer).fit([texts[i] for i in train], y[train], mask[train])
        out[name] = keep(tag_metrics(y[test], base.predict([texts[i] for i in test]), mask[test], vocab), started)

    started = time.perf_counter()
    job = FastJobInput(records_from_catalog(records, max_depth))
    fitted = fit_version(job, vocab, encoder, config, cache, embedding_weight=config.pretrained_head_embedding_weight)
    out["model"] = keep(fitted.metrics, started)

    emb = embed_texts(encoder, texts, cache)
    rows = [("zero-shot", locale)] + ([("zero-shot (English names)", "en")] if locale != "en" else [])
    for name, label_locale in rows:
        started = time.perf_counter()
        pred = _zero_shot_pred(tax, test, emb, encoder, locale, label_locale, vocab)
        out[name] = keep(tag_metrics(y[test], pred, mask[test], vocab), started)
    return out


def main() -> None:
    from services.trainer.embeddings import EmbeddingCache, PretrainedEncoder
    from shared.taxonomy import load_taxonomy

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache", type=Path, default=Path(".tagloop/embeddings"))
    args = parser.parse_args()
    tax = load_taxonomy(args.data / "shopify-taxonomy")
    encoder, cache = PretrainedEncoder(64), EmbeddingCache(args.cache)
    print(json.dumps({loc: run_language(tax, loc, encoder, cache) for loc in ("zh-CN", "en")}, indent=2,
                     ensure_ascii=False))  # fmt: skip


if __name__ == "__main__":
    main()
