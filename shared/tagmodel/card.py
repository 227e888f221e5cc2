"""The model card: what a version of the tag model predicts, how to decide, and where it came from.

Layout of one version: ``<repository>/<model_name>/<version>/`` holding ``model.py`` (tiny Triton
entry point), ``model.onnx`` (or ``model.pt``: the encoder, text -> embedding; an int8 version
also has ``model.int8.onnx``, which it serves on CPU), the tag head
(``head.npz``, ``lexicon.json``), ``tokenizer/`` and ``model_card.json``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.events import TagKind, utc_now
from shared.model_repository import MODEL_CARD_FILE


class VocabEntry(BaseModel):
    """One tag the model predicts, in output order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tag_id: str
    name: str
    kind: TagKind
    taxonomy_id: str | None = None
    name_zh: str | None = None
    parent: str | None = None  # tag_id of the parent category tag (categories only)
    level: int = 1  # depth of a category tag; 0 for attributes
    # Attributes: the normalised Shopify attribute handle, when the key maps to one.
    attribute_handle: str | None = None
    # Categories mapped to the taxonomy: the attribute handles the taxonomy allows there.
    allowed_attributes: list[str] | None = None
    support: int = 0  # training examples


class ModelCard(BaseModel):
    """Everything needed to turn a version's ``PROBS`` into tags, and to know where it came from."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    version: int
    vocabulary: list[VocabEntry]
    thresholds: list[float]  # per tag, on the calibrated PROBS, vocabulary order
    temperature: float = 1.0  # PROBS = sigmoid(head logits / temperature)
    # Zero-shot score of a cold-start tag: sigmoid(scale * (cosine(EMBEDDING, name embedding) - threshold)).
    zero_shot_threshold: float = 0.5
    zero_shot_scale: float = 20.0
    metrics: dict[str, object] = Field(default_factory=dict)
    data_fingerprint: str
    created_at: datetime = Field(default_factory=utc_now)
    base_encoder: str = "sentence-transformers/all-MiniLM-L6-v2"
    export_format: Literal["onnx", "torchscript"] = "onnx"
    # ONNX only: serve the float encoder (model.onnx) or its int8 quantization (model.int8.onnx, beside it).
    encoder_precision: Literal["fp32", "int8"] = "fp32"
    max_length: int = 64
    embedding_dim: int = 384
    seed: int = 0

    def tag_index(self) -> dict[str, int]:
        return {v.tag_id: i for i, v in enumerate(self.vocabulary)}


def load_model_card(version_dir: Path) -> ModelCard:
    """Read ``model_card.json`` of one version directory."""
    return ModelCard.model_validate_json((Path(version_dir) / MODEL_CARD_FILE).read_text(encoding="utf-8"))


def write_model_card(version_dir: Path, card: ModelCard) -> Path:
    """Write the card (pretty JSON, stable key order) and return its path."""
    path = Path(version_dir) / MODEL_CARD_FILE
    path.write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path
