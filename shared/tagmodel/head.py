"""The tag head's inference: one linear scorer per tag over lexical TF-IDF features and the embedding.

Flipkart titles are lexical (brand + product type; a brand's word bigram often decides the
deep category) and a 384-d sentence embedding blurs exactly that, while the embedding knows
what words *mean*. The head reads both: word 1-2 gram TF-IDF of the text and the
L2-normalised embedding (the trainer fits it as one-vs-rest linear SVMs).

Serving needs no scikit-learn: :class:`Lexicon` reproduces ``TfidfVectorizer``'s features
(the terms of the lexicon's analyser, :mod:`shared.tagmodel.analyzer`; sublinear tf, fitted idf,
L2 norm) in numpy (a unit test checks they are equal), so the Triton Python backend runs the very
same head. :meth:`TagHead.explain` splits a tag's margin into the terms, the embedding and the bias.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from shared.tagmodel.analyzer import LEGACY_ANALYZER, analyzer

HEAD_FILE = "head.npz"
LEXICON_FILE = "lexicon.json"


@dataclass(frozen=True)
class Lexicon:
    """TF-IDF features: term -> column, each column's idf, and the analyser that makes the terms.

    ``analyzer`` names a function of :mod:`shared.tagmodel.analyzer`; a lexicon saved without
    one (exported before CJK support) was fitted with the word 1-2 gram analyser and keeps it.
    """

    vocabulary: dict[str, int]
    idf: np.ndarray  # float64 [n_features]
    analyzer: str = LEGACY_ANALYZER

    def __post_init__(self) -> None:
        analyzer(self.analyzer)  # an unknown name fails at load, not at the first listing

    @property
    def size(self) -> int:
        return len(self.idf)

    @cached_property
    def terms(self) -> list[str]:
        """Column -> term (the inverse of ``vocabulary``)."""
        out = [""] * self.size
        for term, col in self.vocabulary.items():
            out[col] = term
        return out

    def row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """``(columns, values)`` of one text's L2-normalised TF-IDF vector (known terms only)."""
        terms = analyzer(self.analyzer)(text)
        counts = Counter(self.vocabulary[t] for t in terms if t in self.vocabulary)
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        values = (1.0 + np.log(tf)) * self.idf[cols]
        return cols, values / np.linalg.norm(values)

    def save(self, path: Path) -> None:
        data = {"analyzer": self.analyzer, "terms": self.terms, "idf": self.idf.tolist()}
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Lexicon:
        raw = json.loads(path.read_text(encoding="utf-8"))  # Triton's stub runs under a C locale
        vocabulary = {t: i for i, t in enumerate(raw["terms"])}
        return cls(vocabulary, np.asarray(raw["idf"], dtype=np.float64), raw.get("analyzer", LEGACY_ANALYZER))


@dataclass(frozen=True)
class MarginParts:
    """One tag's margin on one listing: ``lexical + embedding + bias``, with the top terms."""

    terms: list[tuple[str, float]]
    lexical: float
    embedding: float
    bias: float

    @property
    def margin(self) -> float:
        return self.lexical + self.embedding + self.bias

    @property
    def embedding_share(self) -> float:
        """``|embedding| / (|lexical| + |embedding|)``: how much of the evidence is the embedding's."""
        total = abs(self.lexical) + abs(self.embedding)
        return abs(self.embedding) / total if total > 0 else 0.0


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

    def explain(
        self, text: str, embedding: np.ndarray, columns: Sequence[int], top_k: int = 5
    ) -> list[MarginParts]:
        """Each of ``columns``' margin on one listing, split into terms, embedding block and bias.

        ``terms`` are the ``top_k`` n-grams of ``text`` with the largest positive contribution
        (TF-IDF value x the tag's weight), largest first; their sum with every other term's is
        ``lexical``, and ``lexical + embedding + bias`` is the column's :meth:`logits`.
        """
        cols, values = self.lexicon.row(text)
        emb = np.asarray(embedding, dtype=np.float64).reshape(-1)
        out = []
        for j in columns:
            contrib = values * self.lexical[cols, j].astype(np.float64) if cols.size else np.zeros(0)
            # Ties broken by term, so an explanation is as deterministic as the tags it explains.
            ranked = sorted(
                ((self.lexicon.terms[c], float(w)) for c, w in zip(cols, contrib, strict=True) if w > 0),
                key=lambda tw: (-tw[1], tw[0]),
            )
            out.append(MarginParts(
                terms=ranked[:top_k], lexical=float(contrib.sum()),
                embedding=float(emb @ self.semantic[:, j].astype(np.float64)), bias=float(self.bias[j]),
            ))  # fmt: skip
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
