"""Export a trained run to ``<repository>/<model_name>/<version>/`` as a Triton Python-backend model.

The version directory is assembled under a temporary name and renamed into place, so a Triton
polling the repository never sees half a version. Nothing in it names a path of this machine
(checked before the rename): a version is served wherever its directory is copied.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from services.trainer.model import EmbeddingModel, load_tokenizer
from services.trainer.train import METRICS_FILE, load_trained
from shared.model_repository import next_version, write_model_config
from shared.tagmodel.card import ModelCard, write_model_card
from shared.tagmodel.runtime import ONNX_FILE, TOKENIZER_DIR, TORCHSCRIPT_FILE
from shared.tagmodel.version_files import absolute_paths, make_portable, write_entry_point

ExportFormat = Literal["onnx", "torchscript"]


def _dummy_inputs(tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(["red cotton shirt for men", "steel water bottle 1 litre"], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def write_onnx(serving: EmbeddingModel, tokenizer: Any, path: Path) -> None:
    # The TorchScript-based exporter: the dynamo one needs onnxscript, which is not installed.
    torch.onnx.export(
        serving,
        _dummy_inputs(tokenizer),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq"},
            "embedding": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )


def write_torchscript(serving: EmbeddingModel, tokenizer: Any, path: Path) -> None:
    traced = torch.jit.trace(serving, _dummy_inputs(tokenizer), check_trace=False)
    torch.jit.save(traced, str(path))


def export(
    run_dir: Path,
    repository: Path,
    model_name: str = "tag_model",
    export_format: ExportFormat = "onnx",
    also: tuple[ExportFormat, ...] = (),
) -> Path:
    """Export the finished run in ``run_dir`` as the next version of ``model_name``.

    Parameters
    ----------
    run_dir : Path
        Output directory of ``tagloop train``.
    repository : Path
        Triton model repository (``triton_models``).
    export_format : {"onnx", "torchscript"}
        What the version serves.
    also : tuple
        Extra formats to write beside it (for the ONNX vs TorchScript benchmark).

    Returns
    -------
    Path
        The new version directory.
    """
    config, vocab, model, head, calibration = load_trained(run_dir)
    tokenizer = load_tokenizer()
    serving = EmbeddingModel(model).eval()
    write_model_config(repository, model_name)
    version = next_version(repository, model_name)
    final = Path(repository) / model_name / str(version)
    metrics_file = Path(run_dir) / METRICS_FILE
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    card = ModelCard(
        model_name=model_name,
        version=version,
        vocabulary=vocab,
        thresholds=calibration["thresholds"],
        temperature=calibration["temperature"],
        zero_shot_threshold=calibration.get("zero_shot_threshold", 0.5),
        zero_shot_scale=calibration.get("zero_shot_scale", 20.0),
        metrics=metrics,
        data_fingerprint=calibration["fingerprint"],
        export_format=export_format,
        max_length=config.max_length,
        embedding_dim=model.head.in_features,
        seed=config.seed,
    )
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".export-") as tmp:
        stage = Path(tmp) / "v"
        stage.mkdir()
        # The tracer warns about Python-level branches in transformers' masking code; those branches
        # do not depend on batch or sequence size here (checked by the Triton test with mixed lengths).
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for fmt in dict.fromkeys((export_format, *also)):
                if fmt == "onnx":
                    write_onnx(serving, tokenizer, stage / ONNX_FILE)
                else:
                    write_torchscript(serving, tokenizer, stage / TORCHSCRIPT_FILE)
        tokenizer.save_pretrained(str(stage / TOKENIZER_DIR))
        head.save(stage)
        write_entry_point(stage)
        write_model_card(stage, card)
        make_portable(stage)  # e.g. a tokenizer config that records where it was loaded from
        leaked = absolute_paths(stage)
        if leaked:
            raise RuntimeError(f"export would ship this machine's paths: {leaked[:3]}")
        stage.rename(final)
    return final
