"""Embeddings for a head refit: the current encoder over many texts, cached on disk.

A head refit (the fast job, ``tagloop train --quick``) needs the embedding of every training
text under the encoder the new version will serve: the champion's exported encoder
(:class:`VersionEncoder`, onnxruntime or TorchScript through the serving runtime) or, with no
trained version yet, the pretrained MiniLM (:class:`PretrainedEncoder`). Embedding is most of
the job's time, and the texts are mostly the same from one job to the next (the catalog
changes slowly), so :class:`EmbeddingCache` keeps every embedding computed, keyed by the
encoder's fingerprint and each text's hash: a job embeds only the texts no earlier job saw.

Examples
--------
>>> cache = EmbeddingCache(Path(".tagloop/embeddings"))          # doctest: +SKIP
>>> emb = cache.embed(PretrainedEncoder(max_length=64), texts)   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from shared.model_repository import MODEL_CARD_FILE
from shared.tagmodel.fingerprint import file_sha256


class TextEncoder(Protocol):
    """What a head refit needs of an encoder: a stable identity and ``encode``."""

    @property
    def key(self) -> str:
        """Fingerprint of the encoder's weights and settings: equal keys give equal embeddings."""
        ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``float32 [n, dim]`` L2-normalised embeddings, in the order of ``texts``."""
        ...


class VersionEncoder:
    """The encoder of an exported version (what Triton serves as ``EMBEDDING``), in process."""

    def __init__(self, version_dir: Path, batch_size: int = 64) -> None:
        from shared.tagmodel.runtime import TagModelRuntime

        self.runtime = TagModelRuntime(Path(version_dir))
        self.batch_size = batch_size
        # The served file: an int8 encoder embeds differently from the float one it came from.
        self._key = f"{file_sha256(self.runtime.encoder_file)}:{self.runtime.max_length}"

    @property
    def key(self) -> str:
        return self._key

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.runtime.embed(texts, self.batch_size)


def served_encoder(version_dir: Path) -> VersionEncoder:
    """:class:`VersionEncoder` of a version, loaded once per process while its model card stays the same.

    The gate scores champion and candidate several times a decision (golden set, recent labels,
    explored labels' propensities), and the trainer embeds drift samples every tick: each load
    opens an ONNX session and hashes the encoder file. A version number re-exported after its
    directory was removed gets a new card, hence a new load.
    """
    path = Path(version_dir).resolve()
    return _served_encoder(str(path), (path / MODEL_CARD_FILE).stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)  # champion, candidate, canary, the version being rolled back from
def _served_encoder(path: str, card_mtime_ns: int) -> VersionEncoder:
    return VersionEncoder(Path(path))


class PretrainedEncoder:
    """The pretrained all-MiniLM-L6-v2 (no fine-tuning), truncating at ``max_length`` tokens like a version."""

    def __init__(self, max_length: int = 64, batch_size: int = 64) -> None:
        from shared.encoder import MiniLMEncoder

        self.encoder = MiniLMEncoder(max_length=max_length)
        self.batch_size = batch_size
        weights = sorted(self.encoder.weights_dir.glob("*.safetensors")) or sorted(
            self.encoder.weights_dir.glob("*.bin")
        )
        digest = file_sha256(weights[0]) if weights else "unknown-weights"
        self._key = f"pretrained-{digest}:{max_length}"

    @property
    def key(self) -> str:
        return self._key

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(texts, self.batch_size)


def text_key(text: str) -> bytes:
    """20-byte identity of a text in the cache."""
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).digest()


def texts_fingerprint(texts: Sequence[str]) -> str:
    """sha256 over the texts in order: names the cache shard of one set of texts."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text_key(text))
    return digest.hexdigest()


class EmbeddingCache:
    """Embeddings on disk: ``<directory>/<encoder key hash>/<fingerprint of the texts>.npz`` shards.

    Each shard holds the text hashes and embeddings that one call had to compute; a call reads
    every shard of its encoder and embeds only the texts missing from all of them, so texts are
    embedded once per encoder, whatever sets they come in. Shards are written to a temporary
    file and renamed: a killed job never leaves half a shard (a damaged one is skipped).
    Nothing is evicted (20k texts are 30 MB per encoder): delete an encoder's directory to reclaim it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def _encoder_dir(self, encoder_key: str) -> Path:
        return self.directory / hashlib.sha256(encoder_key.encode()).hexdigest()[:24]

    def embed(self, encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
        """``float32 [n, dim]`` embeddings of ``texts`` under ``encoder``, from the cache where possible."""
        items = list(texts)
        where = self._encoder_dir(encoder.key)
        keys = [text_key(t) for t in items]
        known = self._lookup(where, set(keys))
        missing = list(dict.fromkeys(k for k in keys if k not in known))
        if missing:
            text_of = dict(zip(keys, items, strict=True))
            todo = [text_of[k] for k in missing]
            fresh = np.asarray(encoder.encode(todo), dtype=np.float32)
            known.update(zip(missing, fresh, strict=True))
            self._write(where / f"{texts_fingerprint(todo)}.npz", missing, fresh)
        self.misses += len(missing)
        self.hits += len(items) - len(missing)
        if not items:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([known[k] for k in keys])

    @staticmethod
    def _lookup(where: Path, wanted: set[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        for path in sorted(where.glob("*.npz")) if where.is_dir() else []:
            try:
                with np.load(path) as arrays:
                    hashes, embs = arrays["keys"], arrays["embeddings"]
            except (OSError, ValueError, KeyError):  # a damaged shard is only a lost cache entry
                continue
            if hashes.ndim != 2 or hashes.shape[1] != 20:
                continue
            for i, row in enumerate(hashes):
                k = row.tobytes()
                if k in wanted and k not in found:
                    found[k] = np.asarray(embs[i], dtype=np.float32)
            if len(found) == len(wanted):
                break
        return found

    @staticmethod
    def _write(shard: Path, keys: Sequence[bytes], embeddings: np.ndarray) -> None:
        shard.parent.mkdir(parents=True, exist_ok=True)
        tmp = shard.with_name(f".{shard.stem}.{os.getpid()}.npz")
        # Raw uint8 rows, not a bytes dtype: numpy's "S" strips trailing NUL bytes of a digest.
        raw = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 20)
        np.savez(tmp, keys=raw, embeddings=embeddings)
        tmp.replace(shard)


def embed_texts(encoder: TextEncoder, texts: Sequence[str], cache: EmbeddingCache | None = None) -> np.ndarray:
    """Embeddings of ``texts`` (each distinct text encoded once), through ``cache`` when given."""
    distinct = list(dict.fromkeys(texts))
    emb = cache.embed(encoder, distinct) if cache is not None else np.asarray(encoder.encode(distinct), np.float32)
    at = {t: i for i, t in enumerate(distinct)}
    return emb[[at[t] for t in texts]] if len(texts) else emb
