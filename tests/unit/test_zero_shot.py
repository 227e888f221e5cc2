from __future__ import annotations

import numpy as np

from shared.tagmodel.zero_shot import ZeroShotTagger
from shared.taxonomy import Category


def cats() -> list[Category]:
    return [
        Category("aa", ("Apparel",), ("服饰",)),
        Category("aa-1", ("Apparel", "Clothing"), ("服饰", "服装")),
        Category("aa-1-1", ("Apparel", "Clothing", "Shirts"), ("服饰", "服装", "衬衫")),
        Category("el", ("Electronics",), ("电子",)),
    ]


def tagger(**kw: float) -> ZeroShotTagger:
    emb = np.eye(4, dtype=np.float32)
    return ZeroShotTagger.from_embeddings(cats(), emb, **kw)


def test_best_leaf_comes_with_all_its_ancestors() -> None:
    tags = tagger().tag(np.array([[0.1, 0.2, 1.0, 0.0]], dtype=np.float32))[0]
    assert [t.taxonomy_id for t in tags] == ["aa", "aa-1", "aa-1-1"]
    # The one tag-id scheme (shared.tagmodel.tag_ids): the same id a trained model gives the same path.
    assert [t.tag_id for t in tags] == ["cat:apparel", "cat:apparel/clothing", "cat:apparel/clothing/shirts"]
    assert tags[0].name_zh == "服饰" and tags[2].name == "Apparel > Clothing > Shirts"
    assert all(t.source == "zero-shot" for t in tags)


def test_ancestor_scores_never_below_descendants_and_sum_to_one() -> None:
    t = tagger()
    mass = t.scores(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
    assert np.all(mass[:, 0] >= mass[:, 1]) and np.all(mass[:, 1] >= mass[:, 2])
    np.testing.assert_allclose(mass[:, 0] + mass[:, 3], 1.0, rtol=1e-5)


def test_output_is_deterministic() -> None:
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    assert tagger(top_k=2).tag(x) == tagger(top_k=2).tag(x)
