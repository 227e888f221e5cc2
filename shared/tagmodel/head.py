"""The tag head's inference: one linear scorer per tag over lexical TF-IDF features and the embedding.

Flipkart titles are lexical (brand + product type; a brand's word bigram often decides the
deep category) and a 384-d sentence embedding blurs exactly that, while the embedding knows
what words *mean*. The head reads both: word 1-2 gram TF-IDF of the text and the
L2-normalised embedding (the trainer fits it as one-vs-rest linear SVMs).

Serving needs no scikit-learn: :class:`Lexicon` reproduces ``TfidfVectorizer``'s features
(lowercase, ``\\b\\w\\w+\\b`` tokens, 1-2 grams, sublinear tf, fitted idf, L2 norm) in numpy
(a unit test checks they are equal), so the Triton Python backend runs the very same head.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

HEAD_FILE = "head.npz"
LEXICON_FILE = "lexicon.json"

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern


@dataclass(frozen=True)
class Lexicon:
    """Word 1-2 gram TF-IDF features: term -> column, and each column's idf."""

    vocabulary: dict[str, int]
    idf: np.ndarray  # float64 [n_features]

    @property
    def size(self) -> int:
        return len(self.idf)

    def row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """``(columns, values)`` of one text's L2-normalised TF-IDF vector (known terms only)."""
        tokens = _TOKEN.findall(text.lower())
        terms = tokens + [f"{a} {b}" for a, b in pairwise(tokens)]
        counts = Counter(self.vocabulary[t] for t in terms if t in self.vocabulary)
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        values = (1.0 + np.log(tf)) * self.idf[cols]
        return cols, values / np.linalg.norm(values)

    def save(self, path: Path) -> None:
        terms = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        path.write_text(json.dumps({"terms": terms, "idf": self.idf.tolist()}, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Lexicon:
        raw = json.loads(path.read_text(encoding="utf-8"))  # Triton's stub runs under a C locale
        return cls({t: i for i, t in enumerate(raw["terms"])}, np.asarray(raw["idf"], dtype=np.float64))


@dataclass(frozen=True)
class TagHead:
    """``logits = tfidf(text) @ lexical + embedding @ semantic + bias``, one column per tag."""

    lexicon: Lexicon
    lexical: np.ndarray  # float32 [n_features, n_tags]
    semantic: np.ndarray  # float32 [embedding_dim, n_tags] (embedding_weight folded in)
    bias: np.ndarray  # float32 [n_tags]

    def logits(self, texts: Sequence[str], embeddings: np.ndarray) -> np.ndarray:
        """``float64 [n, n_tags]``: the margin of each tag's scorer."""
        out = np.asarray(embeddings, dtype=np.float64) @ self.semantic.astype(np.float64) + self.bias
        for r, text in enumerate(texts):
            cols, values = self.lexicon.row(text)
            if cols.size:
                out[r] += values @ self.lexical[cols].astype(np.float64)
        return out

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        self.lexicon.save(directory / LEXICON_FILE)
        np.savez_compressed(directory / HEAD_FILE, lexical=self.lexical, semantic=self.semantic, bias=self.bias)

    @classmethod
    def load(cls, directory: Path) -> TagHead:
        directory = Path(directory)
        with np.load(directory / HEAD_FILE) as arrays:
            return cls(Lexicon.load(directory / LEXICON_FILE), arrays["lexical"], arrays["semantic"], arrays["bias"])
