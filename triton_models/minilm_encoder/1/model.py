"""Triton Python-backend model: MiniLM sentence embeddings.

Input ``TEXT`` (BYTES, ``[batch, 1]``, UTF-8) -> output ``EMBEDDING`` (FP32, ``[batch, 384]``).
The embeddings come from :class:`shared.encoder.MiniLMEncoder`, the same code
tagloop uses in-process, so both paths give the same vectors.

A version directory may hold a ``weights/`` checkpoint (``save_pretrained`` output
of a fine-tuned encoder); without one the bundled all-MiniLM-L6-v2 is served.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    from shared.encoder import MiniLMEncoder
    from shared.triton_backend import answer_merged
except ImportError:  # the stub's python lacks the editable install: use the repo this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from shared.encoder import MiniLMEncoder
    from shared.triton_backend import answer_merged


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import torch

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        max_length = int(params.get("max_length") or 256)

        # Triton resolves KIND_AUTO to GPU when it sees one; the CPU build of torch
        # cannot use it, so fall back to CPU rather than failing to load.
        kind = args.get("model_instance_kind", "CPU")
        device_id = args.get("model_instance_device_id", "0")
        device = f"cuda:{device_id}" if kind == "GPU" and torch.cuda.is_available() else "cpu"

        version_dir = Path(args["model_repository"]) / args["model_version"]
        weights = version_dir / "weights"
        weights_dir = weights if (weights / "config.json").is_file() else None

        self.encoder = MiniLMEncoder(device=device, max_length=max_length, weights_dir=weights_dir)
        self.batch_size = max(1, int(config.get("max_batch_size") or 64))
        pb_utils.Logger.log_info(
            f"minilm_encoder: instance kind={kind} device={device} weights={self.encoder.weights_dir} "
            f"max_length={max_length} numpy={np.__version__}"
        )

    def execute(self, requests: list) -> list:
        # An empty title is an upstream bug; embedding it would hide that (INVALID_ARG).
        return answer_merged(pb_utils, requests, self._embed, "encoding")

    def _embed(self, texts: list[str]) -> dict[str, np.ndarray]:
        return {"EMBEDDING": self.encoder.encode(texts, batch_size=self.batch_size)}

    def finalize(self) -> None:
        self.encoder = None
