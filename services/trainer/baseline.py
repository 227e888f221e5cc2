"""The baseline every tag model must beat: TF-IDF word 1-2 grams + linear SVM, one-vs-rest."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.svm import LinearSVC

from services.trainer.head import word_tfidf


class TfidfSvmBaseline:
    """One ``LinearSVC`` per tag over shared TF-IDF features; a tag fires when its margin is > 0.

    Masked targets (attributes of listings without specifications) are left out of that tag's fit.
    """

    def __init__(self, c: float = 1.0, seed: int = 0):
        self.c = c
        self.seed = seed
        self.vectorizer = word_tfidf()
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
