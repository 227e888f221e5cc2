"""Export a tag model version to ``<repository>/<model_name>/<version>/`` as a Triton Python-backend model.

One path for every job: :func:`write_version` writes a version from its parts (vocabulary,
head, calibration, metrics) and an encoder, which is either a torch module to export
(:class:`TorchEncoder`: a fine-tuned run, or the pretrained MiniLM of ``tagloop train --quick``)
or the unchanged encoder of an existing version (:class:`ReusedEncoder`: the fast job, which
hard-links the champion's encoder file instead of exporting it again). :func:`export` is the
``tagloop train`` / ``tagloop export`` entry over a run directory.

The version directory is assembled under a temporary name and renamed into place, so a Triton
polling the repository never sees half a version. Nothing in it names a path of this machine
(checked before the rename): a version is served wherever its directory is copied.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from services.trainer.model import EmbeddingModel, load_tokenizer
from services.trainer.train import METRICS_FILE, load_trained
from shared.model_repository import next_version, write_model_config
from shared.tagmodel.card import ModelCard, VocabEntry, load_model_card, write_model_card
from shared.tagmodel.head import TagHead
from shared.tagmodel.runtime import INT8_ONNX_FILE, ONNX_FILE, TOKENIZER_DIR, TORCHSCRIPT_FILE
from shared.tagmodel.version_files import absolute_paths, make_portable, write_entry_point

ExportFormat = Literal["onnx", "torchscript"]
Precision = Literal["fp32", "int8"]
BASE_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_ENCODER_FILES: dict[str, str] = {"onnx": ONNX_FILE, "torchscript": TORCHSCRIPT_FILE}


@dataclass(frozen=True)
class VersionSpec:
    """Everything a version holds besides its encoder: what it predicts and how to decide.

    ``calibration`` has ``temperature``, ``thresholds`` (vocabulary order) and ``fingerprint``
    (of the training data), optionally ``zero_shot_threshold`` and ``zero_shot_scale``.
    ``encoder_precision`` is what a newly exported ONNX encoder serves (a reused encoder keeps
    its version's: the head was fitted on what that one serves).
    """

    vocab: list[VocabEntry]
    head: TagHead
    calibration: Mapping[str, Any]
    metrics: Mapping[str, Any] = field(default_factory=dict)
    max_length: int = 64
    embedding_dim: int = 384
    seed: int = 0
    base_encoder: str = BASE_ENCODER
    encoder_precision: Precision = "fp32"


@dataclass(frozen=True)
class TorchEncoder:
    """An encoder to export from torch: text -> L2-normalised embedding, and its tokenizer."""

    module: torch.nn.Module
    tokenizer: Any


@dataclass(frozen=True)
class ReusedEncoder:
    """The encoder of an existing version, unchanged: its file is hard-linked (copied across devices)."""

    version_dir: Path


def _dummy_inputs(tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(["red cotton shirt for men", "steel water bottle 1 litre"], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def write_onnx(serving: torch.nn.Module, tokenizer: Any, path: Path) -> None:
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


def write_int8_onnx(source: Path, path: Path) -> None:
    """Dynamic int8 quantization of an ONNX encoder (weights int8, activations quantized per batch).

    What ``tagloop bench tag-runtime`` measures against the float encoder (items/s and F1). One
    scale per output channel: per tensor, MiniLM's embeddings kept only 0.963 cosine to the float
    ones (0.993 per channel, same speed; ``reduce_range`` 0.869), measured on 256 Flipkart titles.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8, per_channel=True)


def write_torchscript(serving: torch.nn.Module, tokenizer: Any, path: Path) -> None:
    traced = torch.jit.trace(serving, _dummy_inputs(tokenizer), check_trace=False)
    torch.jit.save(traced, str(path))


def _link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    try:
        os.link(src, dst)  # versions are immutable: sharing the bytes is safe and costs no disk
    except OSError:
        shutil.copy2(src, dst)


def _write_torch_encoder(
    encoder: TorchEncoder, stage: Path, export_format: ExportFormat, also: tuple[ExportFormat, ...],
    precision: Precision,
) -> None:
    serving = encoder.module.eval()
    # The tracer warns about Python-level branches in transformers' masking code; those branches
    # do not depend on batch or sequence size here (checked by the Triton test with mixed lengths).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fmt in dict.fromkeys((export_format, *also)):
            if fmt == "onnx":
                write_onnx(serving, encoder.tokenizer, stage / ONNX_FILE)
                if precision == "int8":  # the float file stays: the deep job warm-starts from it
                    write_int8_onnx(stage / ONNX_FILE, stage / INT8_ONNX_FILE)
            else:
                write_torchscript(serving, encoder.tokenizer, stage / TORCHSCRIPT_FILE)
    encoder.tokenizer.save_pretrained(str(stage / TOKENIZER_DIR))


def _reuse_encoder(encoder: ReusedEncoder, stage: Path, export_format: ExportFormat, precision: Precision) -> None:
    source = Path(encoder.version_dir)
    names = [_ENCODER_FILES[export_format], *([INT8_ONNX_FILE] if precision == "int8" else [])]
    for name in names:
        if not (source / name).is_file():
            raise FileNotFoundError(f"version {source.name} has no {name} to reuse")
        _link_or_copy(source / name, stage / name)
    shutil.copytree(source / TOKENIZER_DIR, stage / TOKENIZER_DIR, copy_function=_link_or_copy)


def write_version(
    repository: Path,
    model_name: str,
    spec: VersionSpec,
    encoder: TorchEncoder | ReusedEncoder,
    export_format: ExportFormat | None = None,
    also: tuple[ExportFormat, ...] = (),
) -> Path:
    """Write ``spec`` and ``encoder`` as the next version of ``model_name``; return its directory.

    Parameters
    ----------
    repository : Path
        Triton model repository (``triton_models``); its ``config.pbtxt`` is written if missing.
    spec : VersionSpec
        Vocabulary, head, calibration and metrics of the version.
    encoder : TorchEncoder or ReusedEncoder
        Export this torch encoder, or reuse an existing version's encoder file and tokenizer.
    export_format : {"onnx", "torchscript"} or None
        What the version serves; None: ONNX, or the reused version's format.
    also : tuple
        Extra formats to write beside it (torch encoders only; the ONNX vs TorchScript benchmark).
    """
    if isinstance(encoder, ReusedEncoder):
        source_card = load_model_card(encoder.version_dir)
        fmt: ExportFormat = export_format or source_card.export_format
        precision: Precision = source_card.encoder_precision
    else:
        fmt = export_format or "onnx"
        precision = spec.encoder_precision
    precision = precision if fmt == "onnx" else "fp32"  # TorchScript serves the float module
    calibration = spec.calibration
    write_model_config(repository, model_name)
    version = next_version(repository, model_name)
    final = Path(repository) / model_name / str(version)
    card = ModelCard(
        model_name=model_name,
        version=version,
        vocabulary=spec.vocab,
        thresholds=list(calibration["thresholds"]),
        temperature=calibration["temperature"],
        zero_shot_threshold=calibration.get("zero_shot_threshold", 0.5),
        zero_shot_scale=calibration.get("zero_shot_scale", 20.0),
        metrics=dict(spec.metrics),
        data_fingerprint=calibration["fingerprint"],
        base_encoder=spec.base_encoder,
        export_format=fmt,
        encoder_precision=precision,
        max_length=spec.max_length,
        embedding_dim=spec.embedding_dim,
        seed=spec.seed,
    )
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".export-") as tmp:
        stage = Path(tmp) / "v"
        stage.mkdir()
        if isinstance(encoder, ReusedEncoder):
            _reuse_encoder(encoder, stage, fmt, precision)
        else:
            _write_torch_encoder(encoder, stage, fmt, also, precision)
        spec.head.save(stage)
        write_entry_point(stage)
        write_model_card(stage, card)
        make_portable(stage)  # e.g. a tokenizer config that records where it was loaded from
        leaked = absolute_paths(stage)
        if leaked:
            raise RuntimeError(f"export would ship this machine's paths: {leaked[:3]}")
        stage.rename(final)
    return final


def export(
    run_dir: Path,
    repository: Path,
    model_name: str = "tag_model",
    export_format: ExportFormat = "onnx",
    also: tuple[ExportFormat, ...] = (),
    precision: Precision | None = None,
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
    precision : {"int8", "fp32"} or None
        What an ONNX encoder serves; None: the run's ``encoder_precision``.

    Returns
    -------
    Path
        The new version directory.
    """
    config, vocab, model, head, calibration = load_trained(run_dir)
    metrics_file = Path(run_dir) / METRICS_FILE
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    spec = VersionSpec(
        vocab=vocab, head=head, calibration=calibration, metrics=metrics, max_length=config.max_length,
        embedding_dim=model.head.in_features, seed=config.seed,
        encoder_precision=precision or config.encoder_precision,
    )  # fmt: skip
    encoder = TorchEncoder(EmbeddingModel(model), load_tokenizer())
    return write_version(repository, model_name, spec, encoder, export_format, also)
