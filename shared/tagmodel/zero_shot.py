"""Zero-shot category tags: cosine similarity between a listing and taxonomy category names.

Pure core: embeddings in, :class:`~shared.events.Tag` lists out. The encoder that
made the embeddings (Triton or in-process) is the caller's business; labels and
listings must simply be embedded by the same one.

Scores are calibrated as a softmax over all candidate categories (temperature
``temperature``); a category's score is its own mass plus its descendants' mass,
so an ancestor never scores below the leaf that implies it. Tag ids are the one scheme of
:mod:`shared.tagmodel.tag_ids` over the category's English path; the Shopify id is ``taxonomy_id``.
A tagger built for a Chinese locale embeds the taxonomy's zh-CN paths and names its tags in
Chinese (same ids): what a listing whose ``locale`` is ``zh-*`` is tagged with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from shared.events import Tag, TagKind, TagSource
from shared.tagmodel.card import VocabEntry
from shared.tagmodel.tag_ids import category_tag_id
from shared.taxonomy import Category, Taxonomy

# Roots whose names match anything and nothing: never useful as a zero-shot guess.
EXCLUDED_ROOTS = frozenset({"bu", "gc", "na", "pa", "se"})
SCORE_DECIMALS = 4  # rounding keeps output identical across batch compositions


def is_chinese(locale: str | None) -> bool:
    """Whether a BCP 47 locale is Chinese (``zh``, ``zh-CN``, ``zh-Hans-SG``, ``ZH_tw`` ...)."""
    if not locale:
        return False
    return locale.replace("_", "-").split("-", 1)[0].lower() == "zh"


def label_text(category: Category, locale: str = "en") -> str:
    """What a category is embedded as: its full path (reads better than the leaf alone), in Chinese
    (the taxonomy's zh-CN names) for a Chinese ``locale``, else in English."""
    return " > ".join(category.path_zh if is_chinese(locale) else category.path)


def candidate_categories(taxonomy: Taxonomy, max_depth: int = 3) -> list[Category]:
    """The categories zero-shot can tag, by id: down to ``max_depth``, outside :data:`EXCLUDED_ROOTS`."""
    return sorted(
        (c for c in taxonomy.categories.values() if c.depth <= max_depth and c.id.split("-")[0] not in EXCLUDED_ROOTS),
        key=lambda c: c.id,
    )


def category_entries(categories: Sequence[Category]) -> list[VocabEntry]:
    """Taxonomy categories as cold-start tags of a trained model (:class:`~shared.tagmodel.decide.ZeroShotTags`)."""
    return [
        VocabEntry(
            tag_id=category_tag_id(c.path), name=c.full_name, kind=TagKind.CATEGORY, taxonomy_id=c.id,
            name_zh=" > ".join(c.path_zh), parent=category_tag_id(c.path[:-1]) if c.parent_id else None,
            level=c.depth,
        )
        for c in categories
    ]


@dataclass(frozen=True)
class ZeroShotTagger:
    """Tags listing embeddings with taxonomy categories by cosine similarity.

    Parameters
    ----------
    categories
        Candidate categories, in the row order of ``label_embeddings``.
    label_embeddings
        L2-normalised embeddings of :func:`label_text` of each category, shape (n, d).
    parents
        Index of each candidate's parent among the candidates (-1 for a root).
    """

    categories: tuple[Category, ...]
    label_embeddings: np.ndarray
    parents: np.ndarray
    temperature: float = 0.03
    top_k: int = 1
    min_score: float = 0.05
    # The language of the label texts embedded (label_text): a Chinese tagger names its tags in
    # Chinese; tag ids are always those of the English path, one id per category in any locale.
    locale: str = "en"

    @classmethod
    def build(
        cls,
        taxonomy: Taxonomy,
        encode: Callable[[list[str]], np.ndarray],
        max_depth: int = 3,
        locale: str = "en",
        **options: float,
    ) -> ZeroShotTagger:
        """Embed every category down to ``max_depth`` (its :func:`label_text` in ``locale``) with ``encode``."""
        cats = candidate_categories(taxonomy, max_depth)
        embeddings = np.asarray(encode([label_text(c, locale) for c in cats]), dtype=np.float32)
        return cls.from_embeddings(cats, embeddings, locale=locale, **options)

    @classmethod
    def from_embeddings(
        cls, categories: Sequence[Category], embeddings: np.ndarray, locale: str = "en", **options: float
    ) -> ZeroShotTagger:
        index = {c.id: i for i, c in enumerate(categories)}
        parents = np.array([index.get(c.parent_id or "", -1) for c in categories], dtype=np.int64)
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        normed = embeddings / np.maximum(norms, 1e-12)
        return cls(tuple(categories), normed, parents, locale=locale, **options)  # type: ignore[arg-type]

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Calibrated per-category scores (own + descendant softmax mass), shape (n, n_categories)."""
        return self._with_descendants(self._own_probs(embeddings))

    def _with_descendants(self, probs: np.ndarray) -> np.ndarray:
        mass = probs.copy()
        # Push each category's mass up to all its ancestors, deepest first.
        for i in np.argsort([-c.depth for c in self.categories], kind="stable"):
            p = self.parents[i]
            if p >= 0:
                mass[:, p] += mass[:, i]
        return mass

    def tag(self, embeddings: np.ndarray) -> list[list[Tag]]:
        """For each embedding: the ``top_k`` best categories plus all their ancestors."""
        own = self._own_probs(embeddings)
        mass = self._with_descendants(own)
        out: list[list[Tag]] = []
        for row_own, row_mass in zip(own, mass, strict=True):
            chosen: dict[int, float] = {}
            for idx in np.argsort(-row_own, kind="stable")[: self.top_k]:
                if chosen and row_mass[idx] < self.min_score:
                    break
                node = int(idx)
                while node >= 0:
                    chosen[node] = float(row_mass[node])
                    node = int(self.parents[node])
            out.append(self._tags(chosen))
        return out

    def _own_probs(self, embeddings: np.ndarray) -> np.ndarray:
        emb = np.asarray(embeddings, dtype=np.float32)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        logits = (emb @ self.label_embeddings.T) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def _tags(self, chosen: dict[int, float]) -> list[Tag]:
        chinese = is_chinese(self.locale)
        tags = [
            Tag(
                tag_id=category_tag_id(self.categories[i].path),
                name=label_text(self.categories[i], self.locale) if chinese else self.categories[i].full_name,
                kind=TagKind.CATEGORY,
                score=round(min(1.0, score), SCORE_DECIMALS),
                source=TagSource.ZERO_SHOT,
                name_zh=" > ".join(self.categories[i].path_zh),
                taxonomy_id=self.categories[i].id,
            )
            for i, score in chosen.items()
        ]
        # Root first, then deeper: a stable, deterministic order.
        return sorted(tags, key=lambda t: ((t.taxonomy_id or "").count("-"), t.tag_id))
