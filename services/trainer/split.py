"""Train/validation/test split that cannot leak: listings with the same normalised title share a side.

The Flipkart sample repeats many titles verbatim; a random row split would put copies of a
test listing in training and inflate every metric.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.catalog.records import Record


def normalize_title(title: str) -> str:
    """Case-, punctuation- and whitespace-insensitive form of a title: the grouping key."""
    return " ".join(re.findall(r"[a-z0-9]+", title.lower()))


@dataclass(frozen=True)
class Split:
    train: list[int]
    val: list[int]
    test: list[int]


def _unit_hash(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def group_split(records: Sequence[Record], val_frac: float = 0.1, test_frac: float = 0.2, seed: int = 0) -> Split:
    """Indices of train/val/test, assigned per normalised title by a seeded hash.

    Hashing (rather than shuffling) makes a listing's side independent of the other records
    and of their order, so ``--limit`` runs and full runs agree on where a title goes.
    """
    if not 0 <= val_frac < 1 or not 0 <= test_frac < 1 or val_frac + test_frac >= 1:
        raise ValueError("val_frac and test_frac must be in [0, 1) and sum below 1")
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for i, rec in enumerate(records):
        u = _unit_hash(normalize_title(rec.title), seed)
        (test if u < test_frac else val if u < test_frac + val_frac else train).append(i)
    return Split(train=train, val=val, test=test)
