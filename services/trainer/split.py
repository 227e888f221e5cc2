"""Train/validation/test split that cannot leak: listings with the same normalised title share a side.

The Flipkart sample repeats many titles verbatim; a random row split would put copies of a
test listing in training and inflate every metric. The normal form keeps letters and digits of
every script: an ASCII-only form made every all-Chinese title the empty string, one group on one
side, and a run on a Chinese catalog reported a perfect F1 on an empty (or all-training) split.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.tagmodel.tag_ids import words

if TYPE_CHECKING:
    from shared.catalog.records import Record


def normalize_title(title: str) -> str:
    """Case-, punctuation- and whitespace-insensitive form of a title: the grouping key.

    Letters and digits of any script count (NFKC, case-folded: :func:`shared.tagmodel.tag_ids.words`);
    an ASCII title keeps the key it always had, so splits of English catalogs do not move. A title
    with no letter or digit at all is keyed by its normalised, whitespace-collapsed self.

    >>> normalize_title("  Alisha Solid Women's SHORTS!")
    'alisha solid women s shorts'
    >>> normalize_title("ＮＩＫＥ  运动鞋!"), normalize_title("猫粮") == normalize_title("狗粮")
    ('nike 运动鞋', False)
    """
    found = words(title)
    if found:
        return " ".join(found)
    return " ".join(unicodedata.normalize("NFKC", title).casefold().split())


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
