"""Fitting the tag head (:class:`shared.tagmodel.head.TagHead`): one linear SVM per tag.

The head reads TF-IDF of the text's terms (word 1-2 grams, character 1-2 grams inside CJK runs:
:mod:`shared.tagmodel.analyzer`) and the L2-normalised fine-tuned (frozen) embedding, weighted
by ``embedding_weight``; see :mod:`shared.tagmodel.head` for why both, and for the numpy
inference that serves it. Training-only: scikit-learn is imported here, never
in serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.tagmodel.analyzer import DEFAULT_ANALYZER, WORDS, analyzer_name
from shared.tagmodel.analyzer import analyzer as analyzer_fn
from shared.tagmodel.head import Lexicon, TagHead


def word_tfidf(analyzer: str = DEFAULT_ANALYZER) -> Any:
    """The scikit-learn vectorizer whose features :class:`Lexicon` reproduces (also the baseline's).

    ``analyzer`` names a function of :mod:`shared.tagmodel.analyzer` (the default: word 1-2 grams,
    character 1-2 grams inside CJK runs); serving calls the same function on the same text.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer=analyzer_fn(analyzer), sublinear_tf=True)


def lexicon_from_vectorizer(vec: Any) -> Lexicon:
    """The terms, idf and analyser name of a fitted :func:`word_tfidf`.

    A vectorizer with scikit-learn's own word analyser (``ngram_range=(1, 2)``) gives a lexicon of
    the legacy word analyser, which computes the same terms.
    """
    if callable(vec.analyzer):
        name = analyzer_name(vec.analyzer)
    elif vec.analyzer == "word" and tuple(vec.ngram_range) == (1, 2) and vec.lowercase:
        name = WORDS
    else:
        raise ValueError(f"no serving analyser reproduces analyzer={vec.analyzer!r}, ngram_range={vec.ngram_range}")
    return Lexicon({t: int(i) for t, i in vec.vocabulary_.items()}, np.asarray(vec.idf_, dtype=np.float64), name)


def fit_head(
    texts: Sequence[str],
    embeddings: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    c: float = 1.0,
    embedding_weight: float = 1.0,
    seed: int = 0,
    weights: np.ndarray | None = None,
    analyzer: str = DEFAULT_ANALYZER,
) -> TagHead:
    """One ``LinearSVC`` per tag on ``[tfidf, embedding_weight * embedding]``; masked rows left out.

    ``analyzer`` picks the lexical block's terms (:mod:`shared.tagmodel.analyzer`); the fitted
    lexicon records it, so serving reproduces it.

    ``weights`` (``[n, n_tags]``, optional) weighs each (row, tag) example in its tag's SVM
    (``sample_weight``: a merchant's judgement counts more than a shopper's click); rows of
    weight 0 are left out like masked ones. A tag with one class only among its rows gets a
    constant margin of +-1.
    """
    import scipy.sparse as sp
    from sklearn.svm import LinearSVC

    vec = word_tfidf(analyzer)
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
