"""The tag head: numpy TF-IDF (shared) equals scikit-learn's, and the fitted head scores what its SVMs score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from services.trainer.head import fit_head, lexicon_from_vectorizer, word_tfidf
from shared.tagmodel.head import TagHead

TEXTS = [
    "Alisha Solid Women's Cycling Shorts",
    "FabHomeDecor Fabric Double Sofa Bed — Ölive Grün",
    "AW Bellies shoes shoes shoes for women",
    "Sicons All Purpose Arnica Dog Shampoo 500 ml",
    "Eternal Gandhi Super Series Crystal Paper Weights with Silver Finish",
    "x",
    "",
]


def test_lexicon_rows_equal_scikit_learn_tfidf() -> None:
    lex = lexicon_from_vectorizer(word_tfidf().fit(TEXTS[:5]))
    ref = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(TEXTS[:5])
    assert lex.vocabulary == ref.vocabulary_
    texts = [*TEXTS, "SHOES shoes unknownword women"]
    expected = ref.transform(texts).toarray()
    for r, text in enumerate(texts):
        cols, values = lex.row(text)
        got = np.zeros(lex.size)
        got[cols] = values
        np.testing.assert_allclose(got, expected[r], atol=1e-12)


def test_head_logits_equal_the_fitted_svm_margins_and_survive_save_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    texts = [f"{w} item {i}" for i, w in enumerate(["red shirt", "blue jeans", "red dress", "steel bottle"] * 10)]
    emb = rng.normal(size=(len(texts), 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    y = np.array([[("red" in t), ("bottle" in t), 1.0] for t in texts], dtype=np.float32)
    mask = np.ones_like(y)
    mask[:5, 1] = 0  # masked cells are left out of that tag's fit
    head = fit_head(texts, emb, y, mask, embedding_weight=2.0)
    logits = head.logits(texts, emb)
    assert logits.shape == (len(texts), 3)
    assert ((logits[:, 0] > 0) == (y[:, 0] > 0)).all() and ((logits[:, 1] > 0) == (y[:, 1] > 0)).all()
    assert (logits[:, 2] == 1.0).all()  # one class only: a constant margin
    # The same margins as scikit-learn's decision function on the same features.
    from sklearn.svm import LinearSVC

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(texts)
    x = sp.hstack([vec.transform(texts), sp.csr_matrix(2.0 * emb)]).tocsr()
    ref = LinearSVC(C=1.0, random_state=0).fit(x, y[:, 0]).decision_function(x)
    np.testing.assert_allclose(logits[:, 0], ref, atol=1e-5)
    head.save(tmp_path)
    again = TagHead.load(tmp_path)
    np.testing.assert_array_equal(again.logits(texts, emb), logits)
