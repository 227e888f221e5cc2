"""Model vs its own TF-IDF baseline on several catalogs, same split, same run (issue 11 §2).

Each check is a labelled catalog built from ``../shared/data``; on each, with default settings
and no per-catalog tuning, two systems are fitted on the same leak-free split:

* ``baseline``: TF-IDF + one linear SVM per tag (:class:`services.trainer.baseline.TfidfSvmBaseline`);
* ``model``: the served head over the pretrained MiniLM with its thresholds (``tagloop train
  --quick``'s fit, :func:`services.trainer.fast_job.fit_version`).

Reported per system: category micro/macro-F1 and, where the catalog has attributes, attribute
micro-F1 (test side). Checks:

* ``flipkart-specs-title``: the 5k Flipkart listings with specifications, title only;
* ``flipkart-specs-text``: the same listings, title + description;
* ``flipkart-titles``: Flipkart listings without specifications (titles, categories only;
  ``--limit`` caps the Flipkart checks);
* ``shopify-en`` / ``shopify-zh``: the taxonomy's category names as texts labelled with their
  paths (depth 2), split by name so test names are unseen (as in :mod:`bench.chinese`).

Run: ``python -m bench.catalogs [--data ../shared/data] [--only a,b] [--limit N]`` (prints JSON;
``--markdown FILE`` also writes the table). Results: ``bench/results/catalogs.md``.
``--export FILE --only NAME`` writes one check's catalog as JSON lines instead (shuffled), the
input of ``tagloop train|eval loop --data FILE --format jsonl`` (``bench/results/loop.md``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from shared.catalog.readers import load_records
from shared.catalog.records import Record


def _flipkart(data: Path, with_specs: bool, title_only: bool, limit: int | None) -> list[Record]:
    from shared.catalog.flipkart import read_flipkart

    out = []
    for r in read_flipkart(data):
        if r.has_attributes != with_specs:
            continue
        out.append(replace(r, text=r.title) if title_only else r)
        if limit is not None and len(out) >= limit:
            break
    return out


def _shopify(data: Path, locale: str) -> list[Record]:
    from bench.chinese import taxonomy_name_records
    from shared.taxonomy import load_taxonomy

    return taxonomy_name_records(load_taxonomy(data / "shopify-taxonomy"), locale)


CHECKS: dict[str, tuple[Callable[[Path, int | None], list[Record]], int]] = {
    "flipkart-specs-title": (lambda d, n: _flipkart(d, True, True, n), 3),
    "flipkart-specs-text": (lambda d, n: _flipkart(d, True, False, n), 3),
    "flipkart-titles": (lambda d, n: _flipkart(d, False, False, n), 3),
    # The whole catalog as `tagloop train` reads it (issue 11 §1's split), not one of the checks above.
    "flipkart-all": (lambda d, n: load_records(d, "flipkart", n), 3),
    "shopify-en": (lambda d, n: _shopify(d, "en"), 2),
    "shopify-zh": (lambda d, n: _shopify(d, "zh-CN"), 2),
}


def _summary(metrics: dict[str, Any], started: float) -> dict[str, Any]:
    out = {"micro_f1": metrics["micro_f1"], "macro_f1": metrics["macro_f1"]}
    if "attributes" in metrics:
        out["attribute_micro_f1"] = metrics["attributes"]["micro_f1"]
    return {**out, "seconds": round(time.perf_counter() - started, 1)}


def compare(records: Sequence[Record], max_depth: int, encoder: Any, cache: Any) -> dict[str, Any]:
    """Baseline and model on one catalog's leak-free split; test metrics and seconds."""
    from services.trainer.baseline import TfidfSvmBaseline
    from services.trainer.evaluate import tag_metrics
    from services.trainer.fast_job import fit_version
    from services.trainer.job_input import FastJobInput, records_from_catalog
    from services.trainer.labels import build_vocabulary, label_matrix
    from services.trainer.split import group_split
    from services.trainer.train import TrainConfig

    config = TrainConfig(max_depth=max_depth)
    split = group_split(list(records), config.val_frac, config.test_frac, config.seed)
    vocab = build_vocabulary([records[i] for i in split.train], max_depth, config.min_count, config.min_attribute_count)
    y, mask = label_matrix(records, vocab)
    texts = [r.text for r in records]
    out: dict[str, Any] = {"n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
                           "n_tags": len(vocab)}  # fmt: skip

    started = time.perf_counter()
    base = TfidfSvmBaseline().fit([texts[i] for i in split.train], y[split.train], mask[split.train])
    pred = base.predict([texts[i] for i in split.test])
    out["baseline"] = _summary(tag_metrics(y[split.test], pred, mask[split.test], vocab), started)

    started = time.perf_counter()
    job = FastJobInput(records_from_catalog(records, max_depth))
    fitted = fit_version(job, vocab, encoder, config, cache, embedding_weight=config.pretrained_head_embedding_weight)
    out["model"] = _summary(fitted.metrics, started) | {"decision_rule": fitted.metrics["decision_rule"]}
    return out


def markdown(results: dict[str, Any]) -> str:
    """One row per check and system: the table in ``bench/results/catalogs.md``."""
    lines = ["| check | listings (train/test) | tags | system | micro-F1 | macro-F1 | attribute F1 |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for check, r in results.items():
        for system in ("baseline", "model"):
            m = r[system]
            attr = f"{m['attribute_micro_f1']:.4f}" if "attribute_micro_f1" in m else "–"
            lines.append(f"| {check} | {r['n_train']}/{r['n_test']} | {r['n_tags']} | {system} | "
                         f"{m['micro_f1']:.4f} | {m['macro_f1']:.4f} | {attr} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def export_jsonl(records: Sequence[Record], path: Path, seed: int = 0) -> None:
    """``records`` as the JSON lines :func:`shared.catalog.readers.read_jsonl` reads, in a shuffled order."""
    import random

    order = list(records)
    random.Random(seed).shuffle(order)
    with path.open("w", encoding="utf-8") as fh:
        for r in order:
            fh.write(json.dumps({"id": r.id, "text": r.text, "labels": list(r.labels)}, ensure_ascii=False) + "\n")


def main() -> None:
    from services.trainer.embeddings import EmbeddingCache, PretrainedEncoder

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache", type=Path, default=Path(".tagloop/embeddings"))
    default = [name for name in CHECKS if name != "flipkart-all"]  # the five catalogs; the whole one on request
    parser.add_argument("--only", default=",".join(default), help=f"comma-separated checks of {', '.join(CHECKS)}")
    parser.add_argument("--limit", type=int, default=None, help="at most N listings per check")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--export", type=Path, default=None, help="write the --only check's catalog as JSON lines")
    args = parser.parse_args()
    if args.export is not None:
        build, _ = CHECKS[args.only]
        export_jsonl(build(args.data, args.limit), args.export)
        return
    encoder, cache = PretrainedEncoder(64), EmbeddingCache(args.cache)
    results = {}
    for name in [x.strip() for x in args.only.split(",") if x.strip()]:
        build, max_depth = CHECKS[name]
        results[name] = compare(build(args.data, args.limit), max_depth, encoder, cache)
        print(name, json.dumps(results[name]), flush=True)
    print(json.dumps(results, indent=2))
    if args.markdown is not None:
        args.markdown.write_text(markdown(results))


if __name__ == "__main__":
    main()
