"""One exported tag model version in process: encoder (ONNX or TorchScript) + tag head -> PROBS, EMBEDDING.

The Triton Python backend (:mod:`shared.tagmodel.backend`) runs this very class, so Triton and
in-process callers run the same code on the same files and get the same numbers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.tagmodel.card import ModelCard, load_model_card
from shared.tagmodel.head import TagHead

ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"  # the same encoder, dynamically quantized (card: encoder_precision "int8")
TORCHSCRIPT_FILE = "model.pt"
TOKENIZER_DIR = "tokenizer"


def length_order(texts: Sequence[str]) -> list[int]:
    """Indices of ``texts`` shortest first (ties by position): batches of similar length pad less,
    and a text's batch does not depend on the order texts arrived in."""
    return sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))


class TagModelRuntime:
    """Loads the ONNX encoder (onnxruntime; ``model.int8.onnx`` where the card says int8, else
    ``model.onnx``) or ``model.pt`` (TorchScript), the tag head and tokenizer of a version.

    The encoder gives the embedding; the head (numpy) turns text + embedding into tag logits, and
    ``PROBS = sigmoid(logits / temperature)``.

    Parameters
    ----------
    version_dir : Path
        ``<repository>/<model>/<version>/``.
    device : str
        ``"cpu"`` or ``"cuda:N"``; CUDA is used only if the installed runtime supports it.
    export_format : str or None
        Override the card's format (both files may exist side by side, e.g. for benchmarks).
    onnx_file : Path or None
        Another ONNX encoder than the version's (e.g. its int8 quantization, for benchmarks).
    max_length : int or None
        Override the card's truncation length (benchmarks; a head is fitted at the card's).
    """

    def __init__(self, version_dir: Path, device: str = "cpu", export_format: str | None = None,
                 onnx_file: Path | None = None, max_length: int | None = None):
        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers import AutoTokenizer

        self.version_dir = Path(version_dir)
        self.card: ModelCard = load_model_card(self.version_dir)
        self.format = export_format or self.card.export_format
        self.max_length = max_length or self.card.max_length
        self.tokenizer: Any = AutoTokenizer.from_pretrained(
            str(self.version_dir / TOKENIZER_DIR), local_files_only=True
        )
        self.head = TagHead.load(self.version_dir)
        self.device = device
        if self.format == "onnx":
            import onnxruntime as ort

            # int8 pays on CPU only (dynamic quantization is CPU kernels): a GPU serves the float file.
            int8 = self.card.encoder_precision == "int8" and not device.startswith("cuda")
            self.encoder_file = Path(onnx_file or self.version_dir / (INT8_ONNX_FILE if int8 else ONNX_FILE))

            available = ort.get_available_providers()
            providers = ["CPUExecutionProvider"]
            if device.startswith("cuda") and "CUDAExecutionProvider" in available:
                providers.insert(0, "CUDAExecutionProvider")
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self._session: Any = ort.InferenceSession(
                str(self.encoder_file), sess_options=opts, providers=providers
            )
        else:
            import torch

            if device.startswith("cuda") and not torch.cuda.is_available():
                self.device = "cpu"
            self.encoder_file = self.version_dir / TORCHSCRIPT_FILE
            self._module: Any = torch.jit.load(str(self.encoder_file), map_location=self.device)
            self._module.eval()

    def infer(self, texts: Sequence[str], batch_size: int = 64, bucketed: bool = True) -> dict[str, np.ndarray]:
        """``{"PROBS": float32 [n, n_tags], "EMBEDDING": float32 [n, dim]}`` for ``texts``, in order.

        ``bucketed``: batch texts of similar length together (less padding, and results that do
        not depend on arrival order); False batches them in arrival order (benchmarks).
        """
        items = list(texts)
        n_tags = len(self.card.vocabulary)
        probs = np.zeros((len(items), n_tags), dtype=np.float32)
        embs = np.zeros((len(items), self.card.embedding_dim), dtype=np.float32)
        order = length_order(items) if bucketed else list(range(len(items)))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            p, e = self._run([items[i] for i in idx])
            probs[idx] = p
            embs[idx] = e
        return {"PROBS": probs, "EMBEDDING": embs}

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``float32 [n, dim]``: the version's encoder alone (no head), in the order of ``texts``.

        What a head refit on this encoder needs (the trainer's fast job); equal to ``EMBEDDING``.
        """
        items = list(texts)
        embs = np.zeros((len(items), self.card.embedding_dim), dtype=np.float32)
        order = length_order(items)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            embs[idx] = self._embed([items[i] for i in idx])
        return embs

    def _run(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        emb = self._embed(texts)
        logits = self.head.logits(texts, emb)
        probs = 1.0 / (1.0 + np.exp(-logits / self.card.temperature))
        return probs.astype(np.float32), emb

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.encode(*self.tokenize(texts))

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)``, int64, padded to the batch's longest text (≤ ``max_length``)."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    def encode(self, ids: np.ndarray, att: np.ndarray) -> np.ndarray:
        """The encoder alone on tokenized input: ``float32 [n, dim]``."""
        if self.format == "onnx":
            (emb,) = self._session.run(None, {"input_ids": ids, "attention_mask": att})
            return np.asarray(emb, dtype=np.float32)
        import torch

        with torch.inference_mode():
            e = self._module(torch.from_numpy(ids).to(self.device), torch.from_numpy(att).to(self.device))
        return e.float().cpu().numpy()
