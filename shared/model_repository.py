"""Layout of the Triton model repository that tagloop writes and serves.

``<repository>/<model_name>/config.pbtxt`` plus numbered version directories; a version is
complete once its ``model_card.json`` is written (export renames a finished directory into
place), so only versions with a card count.
"""

from __future__ import annotations

from pathlib import Path

MODEL_CARD_FILE = "model_card.json"


def latest_version(repository: Path, model_name: str) -> int | None:
    """Highest numbered version directory of ``model_name`` that holds a model card, or None."""
    model_dir = Path(repository) / model_name
    if not model_dir.is_dir():
        return None
    versions = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / MODEL_CARD_FILE).is_file()]
    return max(versions, default=None)
