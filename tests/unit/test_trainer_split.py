"""The split never lets one title straddle train/validation/test."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.split import group_split, normalize_title
from shared.catalog.readers import load_records
from shared.catalog.records import Record
from shared.settings import Settings


def _sides(records: list[Record], seed: int = 0) -> dict[str, set[str]]:
    split = group_split(records, 0.1, 0.2, seed)
    sides: dict[str, set[str]] = {}
    for name, idx in (("train", split.train), ("val", split.val), ("test", split.test)):
        for i in idx:
            sides.setdefault(normalize_title(records[i].title), set()).add(name)
    return sides


def test_identical_titles_share_a_side_and_sides_are_disjoint() -> None:
    titles = [f"Product {i % 37}" for i in range(500)] + [f"  PRODUCT  {i % 37}!" for i in range(100)]
    records = [Record(str(i), t, ()) for i, t in enumerate(titles)]
    split = group_split(records)
    assert sorted(split.train + split.val + split.test) == list(range(len(records)))
    assert all(len(s) == 1 for s in _sides(records).values())


def test_split_is_seeded_and_order_independent() -> None:
    records = [Record(str(i), f"title {i}", ()) for i in range(300)]
    a = group_split(records, seed=1)
    b = group_split(list(reversed(records)), seed=1)
    test_a = {records[i].id for i in a.test}
    test_b = {records[::-1][i].id for i in b.test}
    assert test_a == test_b
    assert {records[i].id for i in group_split(records, seed=2).test} != test_a


DATA = Settings().data_dir


@pytest.mark.skipif(not (DATA / "flipkart").exists(), reason="shared data not mounted")
def test_no_leak_on_the_real_flipkart_file() -> None:
    records = load_records(Path(DATA), "flipkart")
    assert len(records) == 20_000
    sides = _sides(records)
    assert all(len(s) == 1 for s in sides.values())
    # The file repeats titles, so grouping matters here.
    assert len(sides) < 0.8 * len(records)
    split = group_split(records)
    assert 0.15 < len(split.test) / len(records) < 0.25
