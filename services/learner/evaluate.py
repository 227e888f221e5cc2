"""Affinity evaluation on real purchases (UCI Online Retail): ``tagloop eval affinity``.

Protocol
--------
1. Tag every product description with a tagging function (zero-shot by default).
2. Stream the first ``train_fraction`` of the time span as feedback events through
   :class:`~services.learner.model.AffinityModel`, in time order: every purchase line
   is a ``purchase``; for each purchase line ``impressions_per_purchase`` products the
   customer did not buy in that invoice are shown as ``impression`` (sampled uniformly
   from the products seen so far) and become negatives.
3. For each customer with purchases in the last part of the time span *and* in the
   first (warm customers), rank tags and compare with the set of tags of the products
   the customer bought in the last part: recall@10 (hits / relevant tags) and NDCG@10
   (binary gains). Baselines in the same run: popularity (the 10 tags purchased most
   in the training part, same list for everyone) and per-user frequency (the user's
   own most purchased tags, padded with popularity).

The learner is frozen at the split: nothing from the test part is learned.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from services.learner.features import ModelKind
from services.learner.model import AffinityModel, UserTagClassifier
from shared.events import FeedbackEvent, FeedbackType

# Texts in, tag ids per text out: the only thing the evaluation needs from a tagger.
TagFn = Callable[[list[str]], list[list[str]]]

K = 10
ImpressionMode = Literal["tag", "listing"]
Granularity = Literal["all", "leaf"]


def leaf_tags(tags: Sequence[str]) -> list[str]:
    """The tags no other tag of the same product refines (category ids are paths: ``cat:a/b`` refines ``cat:a``).

    >>> leaf_tags(["cat:apparel", "cat:apparel/shirts", "cat:home"])
    ['cat:apparel/shirts', 'cat:home']
    """
    return [t for t in tags if not any(u != t and u.startswith(t + "/") for u in tags)]


@dataclass(frozen=True)
class Purchase:
    invoice: str
    customer: str
    product: str
    quantity: int
    ts: float


def load_online_retail(path: Path) -> tuple[list[Purchase], dict[str, str]]:
    """Purchases of known customers, time-ordered, and each product's most common description.

    Cancellations (``C`` invoices), rows without a customer and non-positive
    quantities are not purchases and are left out.
    """
    purchases: list[Purchase] = []
    descriptions: dict[str, Counter[str]] = defaultdict(Counter)
    with gzip.open(path, "rt", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            desc = (row["Description"] or "").strip()
            if desc:
                descriptions[row["StockCode"]][desc] += 1
            qty = int(row["Quantity"])
            if row["InvoiceNo"].startswith("C") or not row["CustomerID"] or qty <= 0:
                continue
            ts = datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
            customer = row["CustomerID"].split(".")[0]
            purchases.append(Purchase(row["InvoiceNo"], customer, row["StockCode"], qty, ts))
    purchases.sort(key=lambda p: (p.ts, p.invoice))
    texts = {code: c.most_common(1)[0][0] for code, c in descriptions.items()}
    return purchases, texts


def split_by_time(purchases: Sequence[Purchase], train_fraction: float) -> tuple[list[Purchase], list[Purchase]]:
    """The first ``train_fraction`` of the time span, and the rest."""
    start, end = purchases[0].ts, purchases[-1].ts
    cut = start + train_fraction * (end - start)
    return [p for p in purchases if p.ts < cut], [p for p in purchases if p.ts >= cut]


def feedback_stream(
    purchases: Sequence[Purchase],
    product_tags: dict[str, tuple[str, ...]],
    impressions_per_purchase: int,
    seed: int,
    impression_mode: ImpressionMode = "tag",
) -> Iterator[FeedbackEvent]:
    """Purchase events plus sampled impressions of products not bought in the same invoice.

    ``impression_mode="tag"`` simulates tag-surfaced impressions: a tag drawn uniformly
    from the tags seen so far shows one of its products (``tag_id`` set, so the negative
    is on that tag only). ``"listing"`` shows a product drawn uniformly (negatives on all
    its tags).
    """
    rng = random.Random(seed)
    seen_products: list[str] = []
    seen_set: set[str] = set()
    seen_tags: list[str] = []
    products_of_tag: dict[str, list[str]] = defaultdict(list)
    baskets: dict[str, set[str]] = defaultdict(set)
    for p in purchases:
        baskets[p.invoice].add(p.product)
    for i, p in enumerate(purchases):
        ts = datetime.fromtimestamp(p.ts, UTC)
        if p.product not in seen_set:
            seen_set.add(p.product)
            seen_products.append(p.product)
            for t in product_tags.get(p.product, ()):
                if not products_of_tag[t]:
                    seen_tags.append(t)
                products_of_tag[t].append(p.product)
        yield FeedbackEvent(
            event_id=f"p{i}",
            user_id=p.customer,
            listing_id=p.product,
            type=FeedbackType.PURCHASE,
            quantity=p.quantity,
            ts=ts,
        )
        for j in range(impressions_per_purchase):
            context: str | None = None
            if impression_mode == "tag" and seen_tags:
                context = seen_tags[rng.randrange(len(seen_tags))]
                candidates = products_of_tag[context]
            else:
                candidates = seen_products
            shown = candidates[rng.randrange(len(candidates))]
            if shown in baskets[p.invoice]:
                continue
            yield FeedbackEvent(
                event_id=f"i{i}-{j}",
                user_id=p.customer,
                listing_id=shown,
                type=FeedbackType.IMPRESSION,
                tag_id=context,
                ts=ts,
            )


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int = K) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int = K) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, t in enumerate(ranked[:k]) if t in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def _pad(ranked: list[str], fallback: Sequence[str], k: int = K) -> list[str]:
    out = list(ranked[:k])
    for t in fallback:
        if len(out) >= k:
            break
        if t not in out:
            out.append(t)
    return out


def evaluate_affinity(
    data_path: Path,
    tag_fn: TagFn,
    kind: ModelKind = "lr",
    train_fraction: float = 0.8,
    impressions_per_purchase: int = 2,
    impression_mode: ImpressionMode = "tag",
    granularity: Granularity = "all",
    seed: int = 7,
    model_params: dict[str, Any] | None = None,
    max_train_events: int | None = None,
) -> dict[str, Any]:
    """Run the protocol of this module once; returns the metrics as a JSON-able dict."""
    t0 = time.perf_counter()
    purchases, texts = load_online_retail(data_path)
    train, test = split_by_time(purchases, train_fraction)
    products = sorted({p.product for p in purchases})
    tag_lists = tag_fn([texts.get(code, code) for code in products])
    product_tags = {
        code: tuple(dict.fromkeys(leaf_tags(tags) if granularity == "leaf" else tags))
        for code, tags in zip(products, tag_lists, strict=True)
    }
    t_tagged = time.perf_counter()

    model = AffinityModel(classifier=UserTagClassifier(kind=kind, seed=seed, **(model_params or {})))
    for code, tags in product_tags.items():
        model.set_listing_tags(code, [(t, 1.0) for t in tags])
    n_events = 0
    for event in feedback_stream(train, product_tags, impressions_per_purchase, seed, impression_mode):
        model.learn(event)
        n_events += 1
        if max_train_events is not None and n_events >= max_train_events:
            break
    model.flush()
    t_learned = time.perf_counter()

    popularity_counts: Counter[str] = Counter()
    user_counts: dict[str, Counter[str]] = defaultdict(Counter)
    for p in train:
        for t in product_tags[p.product]:
            popularity_counts[t] += 1
            user_counts[p.customer][t] += 1
    popular = [t for t, _ in sorted(popularity_counts.items(), key=lambda tc: (-tc[1], tc[0]))]

    relevant: dict[str, set[str]] = defaultdict(set)
    for p in test:
        relevant[p.customer].update(product_tags[p.product])
    users = sorted(u for u, rel in relevant.items() if rel and u in user_counts)

    sums: dict[str, float] = defaultdict(float)
    for user in users:
        rel = relevant[user]
        rankings = {
            "learner": [t for t, _ in model.top_tags(user, K)],
            "popularity": popular[:K],
            "user_freq": _pad(
                [t for t, _ in sorted(user_counts[user].items(), key=lambda tc: (-tc[1], tc[0]))], popular
            ),
        }
        for name, ranked in rankings.items():
            sums[f"{name}_recall"] += recall_at_k(ranked, rel)
            sums[f"{name}_ndcg"] += ndcg_at_k(ranked, rel)
        sums["oracle_recall"] += min(len(rel), K) / len(rel)
    n = max(len(users), 1)
    result: dict[str, Any] = {
        "model": model.name,
        "recall_at_10": sums["learner_recall"] / n,
        "ndcg_at_10": sums["learner_ndcg"] / n,
        "popularity_recall_at_10": sums["popularity_recall"] / n,
        "popularity_ndcg_at_10": sums["popularity_ndcg"] / n,
        "user_freq_recall_at_10": sums["user_freq_recall"] / n,
        "user_freq_ndcg_at_10": sums["user_freq_ndcg"] / n,
        "oracle_recall_at_10": sums["oracle_recall"] / n,
        "users_evaluated": len(users),
        "train_purchases": len(train),
        "test_purchases": len(test),
        "train_events": n_events,
        "products": len(products),
        "distinct_tags": len({t for tags in product_tags.values() for t in tags}),
        "mean_tags_per_product": sum(map(len, product_tags.values())) / max(len(product_tags), 1),
        "train_fraction": train_fraction,
        "impressions_per_purchase": impressions_per_purchase,
        "impression_mode": impression_mode,
        "granularity": granularity,
        "tagging_s": round(t_tagged - t0, 2),
        "learning_s": round(t_learned - t_tagged, 2),
        "updates_per_s": round((model.counters.positives + model.counters.negatives) / max(t_learned - t_tagged, 1e-9)),
        "counters": model.counters.as_dict(),
    }
    result["recall_vs_popularity"] = float(result["recall_at_10"]) / max(
        float(result["popularity_recall_at_10"]), 1e-12
    )
    return result


def zero_shot_tag_fn(data_dir: Path, cache_dir: Path | None = None, **tagger_options: Any) -> TagFn:
    """The zero-shot tagger (MiniLM + Shopify taxonomy) as a :data:`TagFn`, cached on disk by text."""

    def tag(texts: list[str]) -> list[list[str]]:
        key = hashlib.sha256(json.dumps([texts, sorted(tagger_options.items())], default=str).encode()).hexdigest()[:16]
        cache = (cache_dir / f"zero-shot-tags-{key}.json") if cache_dir else None
        if cache is not None and cache.exists():
            cached: list[list[str]] = json.loads(cache.read_text())
            return cached
        from shared.encoder import MiniLMEncoder
        from shared.tagmodel.zero_shot import ZeroShotTagger  # heavy: taxonomy + torch
        from shared.taxonomy import load_taxonomy

        encoder = MiniLMEncoder()
        tagger = ZeroShotTagger.build(load_taxonomy(data_dir / "shopify-taxonomy"), encoder.encode, **tagger_options)
        out = [[t.tag_id for t in tags] for tags in tagger.tag(encoder.encode(texts))]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(out))
        return out

    return tag
