"""Tag backends: texts in, tags out, stamped with the model that actually produced them.

* :class:`TritonZeroShotBackend`: the MiniLM encoder served by Triton + zero-shot taxonomy tags.
* :class:`TritonTagModelBackend`: the trained tag model served by Triton (a pinned version),
  with zero-shot tags for the taxonomy categories it was not trained on.

:func:`build_backend` picks the trained model's version the model registry names champion (the
newest version in the repository while the registry has none) when Triton serves it, zero-shot
otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import psycopg

from shared.events import Tag
from shared.model_registry import ModelRegistry
from shared.model_repository import latest_version, versions
from shared.settings import Settings, TrainerSettings
from shared.tagmodel.card import ModelCard, load_model_card
from shared.tagmodel.decide import ZeroShotTags, exploratory_tags, tags_from_probs
from shared.tagmodel.explain import explain_tags, explain_zero_shot
from shared.tagmodel.fingerprint import encoder_fingerprint
from shared.tagmodel.head import TagHead
from shared.tagmodel.zero_shot import ZeroShotTagger, category_entries, label_text
from shared.taxonomy import load_taxonomy
from shared.triton_client import AsyncTritonTextClient

log = logging.getLogger(__name__)

ZERO_SHOT_MODEL_NAME = "zero-shot-minilm"
LABEL_CHUNK = 64


@dataclass(frozen=True)
class ModelStamp:
    """Name and version written on every TagEvent."""

    name: str
    version: str


class TagBackend(Protocol):
    stamp: ModelStamp

    async def tag(self, texts: Sequence[str], listing_ids: Sequence[str] | None = None) -> list[list[Tag]]: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


async def zero_shot_tagger(
    settings: Settings, infer: Callable[[list[str]], Awaitable[dict[str, np.ndarray]]], cache_key: str,
    max_depth: int = 3,
) -> ZeroShotTagger:
    """Build the zero-shot tagger; label embeddings are cached in the state dir per model version."""
    taxonomy = load_taxonomy(settings.data_dir / "shopify-taxonomy")
    probe = ZeroShotTagger.build(taxonomy, lambda xs: np.zeros((len(xs), 1), np.float32), max_depth=max_depth)
    texts = [label_text(c) for c in probe.categories]
    digest = hashlib.sha256("\n".join([cache_key, *texts]).encode()).hexdigest()[:16]
    cache = settings.state_dir / "cache" / f"zero-shot-{digest}.npy"
    if cache.exists():
        embeddings = np.load(cache)
    else:
        # One chunk at a time: thousands of labels sent at once would queue past the deadline.
        chunks = [texts[i : i + LABEL_CHUNK] for i in range(0, len(texts), LABEL_CHUNK)]
        embeddings = np.concatenate([(await infer(chunk))["EMBEDDING"] for chunk in chunks])
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: taggers starting side by side must never load a half-written file.
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, embeddings)
        os.replace(tmp, cache)
    return ZeroShotTagger.from_embeddings(probe.categories, embeddings)


def zero_shot_tags(tagger: ZeroShotTagger, card: ModelCard) -> ZeroShotTags:
    """Cold-start tags of a trained model: the taxonomy categories, scored with the card's calibration."""
    return ZeroShotTags.from_card(card, category_entries(tagger.categories), tagger.label_embeddings)


class TritonZeroShotBackend:
    """Encoder on Triton, zero-shot taxonomy tags in process."""

    def __init__(
        self, client: AsyncTritonTextClient, tagger: ZeroShotTagger, stamp: ModelStamp, explain: bool = False
    ) -> None:
        self.client, self.tagger, self.stamp, self.explain = client, tagger, stamp, explain

    @classmethod
    async def create(cls, settings: Settings) -> TritonZeroShotBackend:
        client = AsyncTritonTextClient(settings.triton.grpc_url, settings.triton.encoder_model,
                                       settings.triton.timeout_s)
        version = await client.model_version()
        stamp = ModelStamp(ZERO_SHOT_MODEL_NAME, f"{settings.triton.encoder_model}.v{version}")
        tagger = await zero_shot_tagger(settings, client.infer, f"{stamp.name}:{stamp.version}")
        return cls(client, tagger, stamp, explain=settings.tagger.explain_tags)

    async def tag(self, texts: Sequence[str], listing_ids: Sequence[str] | None = None) -> list[list[Tag]]:
        out = await self.client.infer(list(texts))
        tags = self.tagger.tag(out["EMBEDDING"])
        if self.explain:
            labels = {c.id: self.tagger.label_embeddings[i] for i, c in enumerate(self.tagger.categories)}
            tags = [explain_zero_shot(t, e, labels) for t, e in zip(tags, out["EMBEDDING"], strict=True)]
        return tags

    async def ready(self) -> bool:
        return await self.client.ready()

    async def close(self) -> None:
        await self.client.close()


class TritonTagModelBackend:
    """The trained tag model on Triton, one pinned version, with its model card."""

    def __init__(
        self, client: AsyncTritonTextClient, version_dir: Path, zero_shot: ZeroShotTagger | None,
        exploration: TrainerSettings | None = None, explain: bool = False,
    ) -> None:
        self.client = client
        self.exploration = exploration or TrainerSettings(exploration_share=0.0)
        self.card = load_model_card(version_dir)
        # The head (numpy) is loaded here only to explain tags: Triton computes the scores.
        self.head = TagHead.load(version_dir) if explain else None
        # tags_from_probs takes ZeroShotTags (calibrated by the card), not the zero-shot tagger.
        self.zero_shot = zero_shot_tags(zero_shot, self.card) if zero_shot is not None else None
        self.stamp = ModelStamp(self.card.model_name, str(self.card.version))

    @classmethod
    async def create(cls, settings: Settings, version: int) -> TritonTagModelBackend:
        name = settings.triton.tag_model
        client = AsyncTritonTextClient(settings.triton.grpc_url, name, settings.triton.timeout_s,
                                       model_version=str(version))
        version_dir = settings.triton_model_repository / name / str(version)
        # Keyed by the encoder, not the version: fast-job versions share the champion's encoder,
        # and embedding the taxonomy's labels again would take a minute of CPU per version.
        encoder = await asyncio.to_thread(encoder_fingerprint, version_dir)
        zero_shot = await zero_shot_tagger(settings, client.infer, f"{name}:encoder:{encoder}")
        return cls(client, version_dir, zero_shot, settings.trainer, explain=settings.tagger.explain_tags)

    async def tag(self, texts: Sequence[str], listing_ids: Sequence[str] | None = None) -> list[list[Tag]]:
        out = await self.client.infer(list(texts))
        tags = tags_from_probs(out["PROBS"], self.card, embeddings=out["EMBEDDING"], zero_shot=self.zero_shot)
        x = self.exploration
        if listing_ids is not None and x.exploration_share > 0:
            salt = f"explore-{self.stamp.version}"
            for i, lid in enumerate(listing_ids):
                tags[i] += exploratory_tags(out["PROBS"][i], self.card, lid, {t.tag_id for t in tags[i]},
                                            x.exploration_share, x.exploration_max_tags_per_listing,
                                            x.exploration_min_score, salt)
        if self.head is not None:
            tags = [explain_tags(t, text, e, self.card, self.head, self.zero_shot)
                    for t, text, e in zip(tags, texts, out["EMBEDDING"], strict=True)]  # fmt: skip
        return tags

    async def ready(self) -> bool:
        return await self.client.ready()

    async def close(self) -> None:
        await self.client.close()


def registry_champion(settings: Settings) -> int | None:
    """The champion version of the tag model in the registry; None when there is none.

    A registry not migrated yet counts as empty; so does one that cannot be reached, with a
    warning (the tagger then serves what it served before the registry existed).
    """
    name = settings.triton.tag_model
    registry = ModelRegistry(settings, connect_timeout_s=5.0)
    try:
        if not registry.is_migrated():
            return None
        champion = registry.champion(name)
    except psycopg.OperationalError as exc:
        log.warning("model registry unreachable, choosing %s from the repository: %s", name, exc)
        return None
    return champion.version if champion is not None else None


async def choose_tag_model_version(settings: Settings) -> int | None:
    """The registry's champion, else the newest complete version in the repository, else None."""
    champion = await asyncio.to_thread(registry_champion, settings)
    if champion is not None:
        log.info("model registry: %s champion is version %s", settings.triton.tag_model, champion)
        return champion
    return latest_version(settings.triton_model_repository, settings.triton.tag_model)


async def build_backend(settings: Settings) -> TagBackend:
    """The trained tag model (:func:`choose_tag_model_version`) if Triton serves it, else zero-shot."""
    version = await choose_tag_model_version(settings)
    name = settings.triton.tag_model
    if version is not None and version not in versions(settings.triton_model_repository, name):
        log.warning("%s version %s is champion but not in the repository %s; using zero-shot",
                    name, version, settings.triton_model_repository)
        version = None
    if version is not None:
        probe = AsyncTritonTextClient(settings.triton.grpc_url, name, settings.triton.timeout_s,
                                      model_version=str(version))
        try:
            served = await probe.model_ready()
        finally:
            await probe.close()
        if served:
            log.info("tagging with %s version %s", name, version)
            return await TritonTagModelBackend.create(settings, version)
        log.warning("%s version %s is in the repository but not served by Triton; using zero-shot", name, version)
    return await TritonZeroShotBackend.create(settings)
