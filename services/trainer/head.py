"""Fitting the tag head (:class:`shared.tagmodel.head.TagHead`): one linear SVM per tag.

The head reads word 1-2 gram TF-IDF of the text and the L2-normalised fine-tuned (frozen)
embedding, weighted by ``embedding_weight``; see :mod:`shared.tagmodel.head` for why both, and
for the numpy inference that serves it. Training-only: scikit-learn is imported here, never
in serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.tagmodel.head import Lexicon, TagHead


def word_tfidf() -> Any:
    """The scikit-learn vectorizer whose features :class:`Lexicon` reproduces (also the baseline's)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)


def lexicon_from_vectorizer(vec: Any) -> Lexicon:
    """The terms and idf of a fitted :func:`word_tfidf`."""
    return Lexicon({t: int(i) for t, i in vec.vocabulary_.items()}, np.asarray(vec.idf_, dtype=np.float64))


def fit_head(
    texts: Sequence[str],
    embeddings: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    c: float = 1.0,
    embedding_weight: float = 1.0,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> TagHead:
    """One ``LinearSVC`` per tag on ``[tfidf, embedding_weight * embedding]``; masked rows left out.

    ``weights`` (``[n, n_tags]``, optional) weighs each (row, tag) example in its tag's SVM
    (``sample_weight``: a merchant's judgement counts more than a shopper's click); rows of
    weight 0 are left out like masked ones. A tag with one class only among its rows gets a
    constant margin of +-1.
    """
    import scipy.sparse as sp
    from sklearn.svm import LinearSVC

    vec = word_tfidf()
    lexical_x = vec.fit_transform(texts)
    lexicon = lexicon_from_vectorizer(vec)
    emb = np.asarray(embeddings, dtype=np.float64)
    x = sp.hstack([lexical_x, sp.csr_matrix(embedding_weight * emb)]).tocsr()
    n_feat, n_tags = lexicon.size, y.shape[1]
    coef = np.zeros((x.shape[1], n_tags), dtype=np.float32)
    bias = np.zeros(n_tags, dtype=np.float32)
    usable = (mask > 0) if weights is None else (mask > 0) & (weights > 0)
    for j in range(n_tags):
        rows = usable[:, j]
        target = y[rows, j]
        if target.size == 0 or target.min() == target.max():
            bias[j] = 1.0 if target.size and target[0] > 0 else -1.0
            continue
        x_j = x if rows.all() else x[rows]  # most tags use every row: no copy of the matrix
        sample_weight = None if weights is None else np.asarray(weights[rows, j], dtype=np.float64)
        clf = LinearSVC(C=c, random_state=seed).fit(x_j, target, sample_weight=sample_weight)
        coef[:, j] = clf.coef_[0]
        bias[j] = clf.intercept_[0]
    semantic = coef[n_feat:] * np.float32(embedding_weight)
    return TagHead(lexicon, np.ascontiguousarray(coef[:n_feat]), np.ascontiguousarray(semantic), bias)
