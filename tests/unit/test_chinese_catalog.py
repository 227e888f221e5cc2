"""Training on a Chinese catalog (issue 11 §3): distinct tag ids, a real split, a meaningful F1.

The catalog is five roots of the Shopify taxonomy in Chinese: each category's zh-CN name is a
listing text labelled with its zh-CN path (:func:`bench.chinese.taxonomy_name_records`). The
split groups by normalised name, so the test side's names are unseen, and the head must place
them under their level-1 and level-2 categories.

Before the fix the split's ASCII-only normal form made every Chinese title the same key: all
records fell on one side, and the run "measured" an empty or all-training test set.
"""

from __future__ import annotations

import json

import pytest

from bench.chinese import taxonomy_name_records
from services.trainer.baseline import TfidfSvmBaseline
from services.trainer.evaluate import tag_metrics
from services.trainer.split import normalize_title
from services.trainer.train import TrainConfig, prepare
from shared.catalog.records import CATEGORY_SEP
from shared.settings import Settings
from shared.tagmodel.analyzer import WORDS, WORDS_CJK
from shared.tagmodel.tag_ids import category_tag_id
from shared.taxonomy import load_taxonomy

DATA = Settings().data_dir
ROOTS = {"ap", "aa", "fb", "el", "hb"}  # pets, apparel, food, electronics, health: ~2,300 categories

pytestmark = pytest.mark.skipif(not (DATA / "shopify-taxonomy").exists(), reason="shared data not mounted")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    records = taxonomy_name_records(load_taxonomy(DATA / "shopify-taxonomy"), "zh-CN", ROOTS)
    path = tmp_path_factory.mktemp("zh") / "catalog.jsonl"
    path.write_text("".join(json.dumps({"id": r.id, "text": r.text, "labels": list(r.labels)}, ensure_ascii=False)
                            + "\n" for r in records), encoding="utf-8")  # fmt: skip
    return prepare(TrainConfig(data=path, format="jsonl", taxonomy=None, max_depth=2))


def test_every_chinese_category_gets_its_own_stable_tag_id(prepared) -> None:  # type: ignore[no-untyped-def]
    vocab = prepared.vocab
    ids = [v.tag_id for v in vocab]
    assert len(ids) == len(set(ids)) > 20
    # The id is the slug of the Chinese path itself, the same on every run.
    pets = next(r for r in prepared.records if r.id == "ap-2")
    path = pets.labels[0].split(CATEGORY_SEP)
    assert category_tag_id(path) in ids and category_tag_id(path[:1]) in ids
    assert category_tag_id(path) == "cat:动物-宠物用品/宠物用品"
    assert all(v.parent in set(ids) for v in vocab if v.level > 1)


def test_the_split_groups_chinese_titles_by_name_not_into_one_group(prepared) -> None:  # type: ignore[no-untyped-def]
    records, split = prepared.records, prepared.split
    n = len(records)
    assert 0.1 < len(split.test) / n < 0.3 and 0.6 < len(split.train) / n < 0.8
    side = {}
    for name, idx in (("train", split.train), ("val", split.val), ("test", split.test)):
        for i in idx:
            assert side.setdefault(normalize_title(records[i].title), name) == name
    assert len(side) > 0.9 * n  # names, not one empty key


def test_unseen_chinese_names_are_placed_in_the_tree_and_character_ngrams_are_what_does_it(prepared) -> None:  # type: ignore[no-untyped-def]
    records, split, y, mask, vocab = prepared.records, prepared.split, prepared.y, prepared.mask, prepared.vocab
    texts = [r.text for r in records]
    train, test = split.train, split.test
    f1 = {}
    for analyzer in (WORDS, WORDS_CJK):
        base = TfidfSvmBaseline(analyzer=analyzer).fit([texts[i] for i in train], y[train], mask[train])
        f1[analyzer] = tag_metrics(y[test], base.predict([texts[i] for i in test]), mask[test], vocab)["micro_f1"]
    # Measured on hundreds of unseen names, and far from the "perfect" F1 of an empty test side.
    assert len(test) > 300 and y[test].sum() > 300
    assert 0.6 < f1[WORDS_CJK] < 0.95
    # A run of Chinese characters as one token shares nothing with other names.
    assert f1[WORDS] < 0.3 < f1[WORDS_CJK] - f1[WORDS]


def test_chinese_category_names_map_onto_the_taxonomy_by_their_zh_cn_names(prepared) -> None:  # type: ignore[no-untyped-def]
    from services.trainer.labels import map_to_taxonomy

    tax = load_taxonomy(DATA / "shopify-taxonomy")
    mapped = {v.tag_id: v for v in map_to_taxonomy(prepared.vocab, tax)}
    pets = mapped["cat:动物-宠物用品/宠物用品"]
    assert (pets.taxonomy_id, pets.name_zh) == ("ap-2", "宠物用品") and pets.allowed_attributes is not None
    # Every tag here is a taxonomy category named in Chinese: each maps back to the category it names.
    by_id = {c.id: c for c in tax.categories.values()}
    assert all(v.taxonomy_id is not None for v in mapped.values())
    assert all(category_tag_id(by_id[v.taxonomy_id].path_zh) == v.tag_id for v in mapped.values())  # type: ignore[index]
