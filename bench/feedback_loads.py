"""Load shapes for ``tagloop bench feedback``: uniform, skewed like real shoppers, and a real replay.

* ``uniform``: :func:`services.feedback.loadgen.synthetic_feedback` (every user and listing
  equally likely; the hardest case for counters: few keys repeat within a batch).
* ``skewed``: the same event mix, with listings drawn from the purchase frequency of the
  products of UCI Online Retail and users from the purchase frequency of its customers
  (a few products and customers account for much of the traffic, as in a real shop).
* ``replay``: the real Online Retail purchase lines in time order (cancellations and lines
  without a customer left out), each a ``purchase`` feedback event: customer = user,
  StockCode = listing, real quantity, unit price and invoice time.

Listings get synthetic tags (3 of 200 per listing), as in the uniform load.
"""

from __future__ import annotations

import csv
import gzip
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from services.feedback.loadgen import synthetic_event, synthetic_feedback, synthetic_tags, tag_event
from shared.events import FeedbackEvent, FeedbackType, TagEvent

LOADS = ("uniform", "skewed", "replay")


@dataclass(frozen=True)
class Purchase:
    invoice: str
    stock_code: str
    quantity: int
    ts: datetime
    price: float
    customer: str


@cache
def online_retail(data_dir: Path) -> tuple[Purchase, ...]:
    """Purchase lines of Online Retail in file (time) order: no cancellations, a customer, quantity >= 1."""
    out: list[Purchase] = []
    with gzip.open(Path(data_dir) / "online-retail" / "online_retail.csv.gz", "rt", newline="") as f:
        for row in csv.DictReader(f):
            if row["InvoiceNo"].startswith("C") or not row["CustomerID"]:
                continue
            quantity, price = int(row["Quantity"]), float(row["UnitPrice"])
            if not 1 <= quantity <= 1_000_000 or not 0 <= price <= 1e9:
                continue
            ts = datetime.fromisoformat(row["InvoiceDate"]).replace(tzinfo=UTC)
            customer = row["CustomerID"].removesuffix(".0")
            out.append(Purchase(row["InvoiceNo"], row["StockCode"], quantity, ts, price, customer))
    return tuple(out)


def replay_feedback(prefix: str, n: int, data_dir: Path) -> Iterator[FeedbackEvent]:
    """The first ``n`` real purchases as feedback events (ids unique per line)."""
    for i, p in enumerate(online_retail(data_dir)[:n]):
        yield FeedbackEvent(
            event_id=f"{prefix}-{p.invoice}-{i}",
            user_id=f"{prefix}-c{p.customer}",
            listing_id=f"{prefix}-p{p.stock_code}",
            type=FeedbackType.PURCHASE,
            quantity=p.quantity,
            price=p.price,
            ts=p.ts,
        )


def skewed_feedback(prefix: str, n: int, data_dir: Path, seed: int = 0) -> Iterator[FeedbackEvent]:
    """Synthetic events whose listings and users follow Online Retail's product and customer frequencies."""
    purchases = online_retail(data_dir)
    products = Counter(p.stock_code for p in purchases)
    customers = Counter(p.customer for p in purchases)
    rng = random.Random(seed)
    listing_ids, listing_w = zip(*products.most_common(), strict=True)
    user_ids, user_w = zip(*customers.most_common(), strict=True)
    listings = rng.choices(listing_ids, listing_w, k=n)
    users = rng.choices(user_ids, user_w, k=n)
    for i in range(n):
        yield synthetic_event(prefix, i, n, f"{prefix}-c{users[i]}", f"{prefix}-p{listings[i]}", rng)


def load(
    shape: str, prefix: str, n: int, data_dir: Path, n_users: int = 20_000, n_listings: int = 5_000
) -> tuple[list[TagEvent], list[FeedbackEvent]]:
    """The listings' tags and the feedback events of one load shape."""
    if shape == "uniform":
        return synthetic_tags(prefix, n_listings), list(
            synthetic_feedback(prefix, n, n_users=n_users, n_listings=n_listings)
        )
    events = list(replay_feedback(prefix, n, data_dir) if shape == "replay" else skewed_feedback(prefix, n, data_dir))
    rng = random.Random(f"{prefix}-tags")
    listings = sorted({e.listing_id for e in events})
    return [tag_event(lid, {f"t{rng.randrange(200)}" for _ in range(3)}) for lid in listings], events
