"""The Triton Python-backend model of the tag model.

Each version's ``model.py`` (:data:`shared.tagmodel.version_files.ENTRY_POINT`) only imports
:class:`TritonTagModel`: all logic lives here and in :mod:`shared.tagmodel.runtime`, so the
Triton image needs ``shared/`` only.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from shared.tagmodel.runtime import TagModelRuntime
from shared.triton_backend import answer_merged


class TritonTagModel:
    """Triton Python model: ``TEXT`` (BYTES [batch, 1]) -> ``PROBS`` [batch, n_tags], ``EMBEDDING``."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        # KIND_AUTO resolves to GPU where Triton sees one; the runtime falls back to CPU
        # when the installed onnxruntime/torch cannot use it.
        kind = args.get("model_instance_kind", "CPU")
        device = f"cuda:{args.get('model_instance_device_id', '0')}" if kind == "GPU" else "cpu"
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.runtime = TagModelRuntime(version_dir, device=device)
        self.batch_size = max(1, int(config.get("max_batch_size") or 64))
        pb_utils.Logger.log_info(
            f"tag_model: version={args['model_version']} format={self.runtime.format} kind={kind} "
            f"tags={len(self.runtime.card.vocabulary)}"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        # Empty texts are allowed here: they get the head's priors (the tagger validates listings).
        run = functools.partial(self.runtime.infer, batch_size=self.batch_size)
        return answer_merged(self._pb, requests, run, "tag model", allow_empty=True)

    def finalize(self) -> None:
        self.runtime = None  # type: ignore[assignment]
