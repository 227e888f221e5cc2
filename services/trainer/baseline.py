"""The baseline every tag model must beat: TF-IDF + linear SVM, one-vs-rest.

Its TF-IDF is the tag head's lexical block (:func:`services.trainer.head.word_tfidf`: word 1-2
grams, character 1-2 grams inside CJK runs), so the model's gain over it is the embedding's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.svm import LinearSVC

from services.trainer.head import word_tfidf
from shared.tagmodel.analyzer import DEFAULT_ANALYZER


class TfidfSvmBaseline:
    """One ``LinearSVC`` per tag over shared TF-IDF features; a tag fires when its margin is > 0.

    Masked targets (attributes of listings without specifications) are left out of that tag's fit.
    """

    def __init__(self, c: float = 1.0, seed: int = 0, analyzer: str = DEFAULT_ANALYZER):
        self.c = c
        self.seed = seed
        self.vectorizer = word_tfidf(analyzer)
        self.models: list[LinearSVC | float] = []

    def fit(self, texts: Sequence[str], y: np.ndarray, mask: np.ndarray | None = None) -> TfidfSvmBaseline:
        x = self.vectorizer.fit_transform(texts)
        mask = np.ones_like(y) if mask is None else mask
        self.models = []
        for j in range(y.shape[1]):
            rows = mask[:, j] > 0
            target = y[rows, j]
            if target.min() == target.max():  # one class only: a constant decision
                self.models.append(1.0 if target.size and target[0] > 0 else -1.0)
                continue
            clf = LinearSVC(C=self.c, random_state=self.seed)
            self.models.append(clf.fit(x[rows], target))
        return self

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        x = self.vectorizer.transform(texts)
        cols = [np.full(x.shape[0], m) if isinstance(m, float) else m.decision_function(x) for m in self.models]
        return np.stack(cols, axis=1) if cols else np.zeros((x.shape[0], 0))

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """``bool [n, n_tags]``."""
        return self.decision_function(texts) > 0
