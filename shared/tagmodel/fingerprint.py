"""What identifies a version's encoder: versions that share it (a fast job keeps the champion's)
embed every text identically, so caches of embeddings are keyed by this, not by version number."""

from __future__ import annotations

import hashlib
from pathlib import Path

ENCODER_FILES = ("model.onnx", "model.pt")
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def encoder_fingerprint(version_dir: Path) -> str:
    """sha256 of the version's encoder file (ONNX, else TorchScript); the directory name if it has none."""
    for name in ENCODER_FILES:
        path = Path(version_dir) / name
        if path.is_file():
            return file_sha256(path)
    return f"no-encoder:{Path(version_dir).name}"
