"""Fine-tune MiniLM with a multi-label head: seeded, checkpointed, resumable.

``train(config)`` writes into ``config.out``:
``config.json`` (the run's settings), ``vocab.json``, ``checkpoint.pt`` (resume state, rewritten
every ``checkpoint_every`` steps and at each epoch end) and, when training is done, ``model.pt``
(final encoder weights), the tag head (``head.npz``, ``lexicon.json``), ``calibration.json``
(temperature, thresholds) and ``metrics.json``.

Two stages: (1) fine-tune the encoder end to end with a linear multi-label head on its embedding;
(2) freeze it and fit the served :class:`~shared.tagmodel.head.TagHead` (linear SVMs over the
embedding plus lexical TF-IDF features) on the training listings.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel

from services.trainer.head import fit_head as fit_svm_head
from services.trainer.labels import build_vocabulary, label_matrix, map_to_taxonomy
from services.trainer.model import TagModel, load_tokenizer
from services.trainer.split import Split, group_split
from services.trainer.thresholds import choose_thresholds, fit_temperature, fit_zero_shot
from shared.catalog.readers import Format, load_records
from shared.catalog.records import Record, fingerprint
from shared.tagmodel.card import VocabEntry
from shared.tagmodel.head import TagHead
from shared.taxonomy import load_taxonomy

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
CALIBRATION_FILE = "calibration.json"
METRICS_FILE = "metrics.json"


class TrainConfig(BaseModel):
    """Settings of one training run (saved beside the checkpoint; ``--resume`` reuses them)."""

    data: Path = Path("../shared/data")
    format: Format = "flipkart"
    out: Path = Path("artifacts/tag_model")
    taxonomy: Path | None = Path("../shared/data/shopify-taxonomy")
    epochs: int = 3
    batch_size: int = 32
    max_length: int = 64
    limit: int | None = None
    seed: int = 0
    lr: float = 8e-5
    head_lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    max_depth: int = 3
    min_count: int = 5
    min_attribute_count: int = 5
    val_frac: float = 0.1
    test_frac: float = 0.2
    target_precision: float = 0.8
    # Thresholds only ever raise a tag's cut above the head's own decision boundary (margin 0,
    # i.e. probability 0.5): the SVMs are already precise, lower cuts bought recall at a loss of F1.
    # Whether tuned cuts beat the boundary itself is decided per run on validation by cross-fitting
    # (thresholds.choose_thresholds; on five catalogs the boundary won).
    min_threshold: float = 0.5
    # A precision measured on fewer validation positives is noise: such tags get the threshold pooled
    # over all tags (never below the boundary).
    threshold_min_positives: int = 20
    checkpoint_every: int = 200
    # Exact duplicate listings (same text and labels; the Flipkart file has thousands) add no
    # information, only weight and time: train on one copy of each.
    dedupe: bool = True
    # Stage 2, the served head (services/trainer/head.py): SVM regularisation and the weight of the
    # embedding block against the (unit-norm) TF-IDF block; 4 was chosen over 1 and 2 by
    # validation micro+macro F1 (bench/results/tag_model.md).
    head_c: float = 1.0
    # What an exported ONNX encoder serves. int8 (dynamic, per channel) ran 1.4-1.8x the items/s
    # of the float encoder at the same F1 on CPU, but quantizes activations per batch: a listing's
    # tags then depend on which listings share its batch (6 % of them changed between batch 1 and
    # 32), and per-item int8 is no faster than batched float (`tagloop bench tag-runtime`,
    # bench/results/tag_model.md). So float by default; int8 for those who trade that for speed.
    encoder_precision: Literal["fp32", "int8"] = "fp32"
    head_embedding_weight: float = 4.0
    # The same over the *pretrained* embeddings (`tagloop train --quick`, a fast job on such a
    # version): they separate tags less, so the lexical block must weigh more. 2 was chosen over
    # 1 and 4 by micro+macro F1 (bench/results/fast_job.md).
    pretrained_head_embedding_weight: float = 2.0


@dataclass
class Prepared:
    """Records, their leak-free split and the label matrices over the training vocabulary."""

    records: list[Record]
    split: Split
    vocab: list[VocabEntry]
    y: np.ndarray
    mask: np.ndarray
    fingerprint: str


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(config: TrainConfig) -> Prepared:
    """Read the data, split it by title, build the vocabulary from the training side only."""
    records = load_records(config.data, config.format, config.limit)
    if not records:
        raise ValueError(f"no records read from {config.data} ({config.format})")
    split = group_split(records, config.val_frac, config.test_frac, config.seed)
    train_recs = [records[i] for i in split.train]
    vocab = build_vocabulary(train_recs, config.max_depth, config.min_count, config.min_attribute_count)
    if config.taxonomy is not None and Path(config.taxonomy).exists():
        vocab = map_to_taxonomy(vocab, load_taxonomy(Path(config.taxonomy)))
    if not vocab:
        raise ValueError("no tag has enough training examples; lower --min-count or add data")
    y, mask = label_matrix(records, vocab)
    return Prepared(records, split, vocab, y, mask, fingerprint(records))


def unique_records(records: Sequence[Record], idx: Sequence[int]) -> list[int]:
    """The first of each group of identical records (text, labels, attribute flag) among ``idx``."""
    seen: set[tuple[str, tuple[str, ...], bool]] = set()
    out: list[int] = []
    for i in idx:
        key = (records[i].text, records[i].labels, records[i].has_attributes)
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out


def _batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffled batches of similar-length texts (less padding = faster on CPU), in shuffled order."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        block = sorted(order[start : start + chunk].tolist(), key=lambda i: (lengths[i], i))
        batches += [block[k : k + batch_size] for k in range(0, len(block), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _collate(encoded: Sequence[list[int]], idx: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(encoded[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(idx), width), dtype=torch.long)
    for r, i in enumerate(idx):
        ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
        att[r, : len(encoded[i])] = 1
    return ids, att


def train_step(
    model: TagModel, opt: Any, sched: Any, encoded: Sequence[list[int]], idx: Sequence[int],
    y: torch.Tensor, m: torch.Tensor, pad_id: int,
) -> torch.Tensor:
    """One optimiser step on the listings ``idx``; returns the loss (masked BCE)."""
    ids, att = _collate(encoded, idx, pad_id)
    logits, _ = model(ids, att)
    # Sum over tags, mean over listings: rare positives keep a useful gradient.
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx], reduction="none")
    loss = (bce * m[idx]).sum() / len(idx)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text (truncated, unpadded), as the serving runtime tokenizes."""
    return list(tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"])


@torch.inference_mode()
def embed(model: TagModel, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """``float32 [n, dim]`` fine-tuned embeddings of ``texts``, in their order."""
    model.eval()
    encoded = tokenize(tokenizer, texts, max_length)
    order = sorted(range(len(texts)), key=lambda i: (len(encoded[i]), i))
    embs = np.zeros((len(texts), model.head.in_features), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, att = _collate(encoded, idx, tokenizer.pad_token_id)
        embs[idx] = model(ids, att)[1].numpy()
    return embs


def _optimizer(model: TagModel, config: TrainConfig, total_steps: int) -> tuple[Any, Any]:
    head = [model.head.weight, model.head.bias, model.scale]
    head_ids = {id(p) for p in head}
    encoder = [p for p in model.parameters() if id(p) not in head_ids]
    opt = torch.optim.AdamW(
        [{"params": encoder, "lr": config.lr}, {"params": head, "lr": config.head_lr}],
        weight_decay=config.weight_decay,
    )
    warmup = max(1, int(total_steps * config.warmup_frac))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


ProgressFn = Callable[[int, int, float], None]


def _progress_steps(total: int, start: int, label: str) -> Generator[ProgressFn, None, None]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(label, total=total, completed=start, loss="")

        def update(done: int, _total: int, loss: float) -> None:
            progress.update(task, completed=done, loss=f"loss {loss:.4f}")

        yield update


def train(
    config: TrainConfig, resume: bool = False, progress: bool = True, stop_after_steps: int | None = None
) -> Path:
    """Train (or resume) and calibrate; return the output directory.

    Parameters
    ----------
    config : TrainConfig
        Run settings; with ``resume`` the ones saved in ``config.out`` are used instead.
    resume : bool
        Continue from ``checkpoint.pt`` (same data order, optimiser and RNG state).
    progress : bool
        Show a progress bar.
    stop_after_steps : int or None
        Checkpoint and return after this many optimiser steps in total, without calibrating
        (an interruption on purpose; ``resume`` continues from there).
    """
    out = Path(config.out)
    if resume and (out / CONFIG_FILE).exists():
        saved = TrainConfig.model_validate_json((out / CONFIG_FILE).read_text())
        config = saved.model_copy(update={"out": out})
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    prep = prepare(config)
    (out / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    (out / VOCAB_FILE).write_text(json.dumps([v.model_dump(mode="json") for v in prep.vocab], indent=1))

    tokenizer = load_tokenizer()
    texts = [r.text for r in prep.records]
    encoded = tokenize(tokenizer, texts, config.max_length)
    train_idx = unique_records(prep.records, prep.split.train) if config.dedupe else prep.split.train
    lengths = [len(encoded[i]) for i in train_idx]
    steps_per_epoch = -(-len(train_idx) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs

    model = TagModel(len(prep.vocab))
    opt, sched = _optimizer(model, config, total_steps)
    epoch, step_in_epoch, global_step = 0, 0, 0
    ckpt = out / CHECKPOINT_FILE
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        torch.set_rng_state(state["torch_rng"])

    def save_checkpoint(ep: int, step: int) -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save(
            {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": ep, "step_in_epoch": step, "global_step": global_step,
             "torch_rng": torch.get_rng_state()},
            tmp,
        )  # fmt: skip
        tmp.replace(ckpt)  # atomic: a kill mid-write never leaves a broken checkpoint

    y = torch.from_numpy(prep.y)
    m = torch.from_numpy(prep.mask)
    bar = _progress_steps(total_steps, global_step, "train") if progress else None
    update = next(bar) if bar is not None else None
    try:
        while epoch < config.epochs:
            rng = np.random.default_rng(config.seed * 1000 + epoch)
            batches = _batches(lengths, config.batch_size, rng)
            model.train()
            for b in range(step_in_epoch, len(batches)):
                idx = [train_idx[k] for k in batches[b]]
                loss = train_step(model, opt, sched, encoded, idx, y, m, tokenizer.pad_token_id)
                global_step += 1
                if update is not None:
                    update(global_step, total_steps, loss.item())
                if global_step % config.checkpoint_every == 0 or global_step == stop_after_steps:
                    save_checkpoint(epoch, b + 1)
                if global_step == stop_after_steps:
                    return out
            epoch, step_in_epoch = epoch + 1, 0
            save_checkpoint(epoch, 0)
    finally:
        if bar is not None:
            bar.close()

    torch.save(model.state_dict(), out / MODEL_FILE)
    head = fit_head(model, tokenizer, prep, config)
    head.save(out)
    calibrate(model, head, tokenizer, prep, config, out)
    return out


def fit_head(model: TagModel, tokenizer: Any, prep: Prepared, config: TrainConfig) -> TagHead:
    """Stage 2: the served head on the fine-tuned, frozen embeddings of every training listing.

    All training rows, duplicates included (as the baseline sees them): a listing sold many
    times weighs more. Each distinct text is embedded once.
    """
    rows = prep.split.train
    texts = [prep.records[i].text for i in rows]
    distinct = list(dict.fromkeys(texts))
    emb = embed(model, tokenizer, distinct, config.max_length)
    at = {t: k for k, t in enumerate(distinct)}
    return fit_svm_head(
        texts, emb[[at[t] for t in texts]], prep.y[rows], prep.mask[rows],
        c=config.head_c, embedding_weight=config.head_embedding_weight, seed=config.seed,
    )  # fmt: skip


def score(
    model: TagModel, head: TagHead, tokenizer: Any, texts: Sequence[str], max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(head logits float64 [n, n_tags], embeddings [n, dim])``: what a served version computes."""
    emb = embed(model, tokenizer, texts, max_length)
    return head.logits(texts, emb), emb


def tag_texts(vocab: Sequence[VocabEntry]) -> list[str]:
    """The text embedded for each tag in zero-shot scoring: a category's path, an attribute's name."""
    by_id = {v.tag_id: v for v in vocab}
    texts = []
    for v in vocab:
        path, parent = [v.name], v.parent
        while parent is not None and parent in by_id:
            path.insert(0, by_id[parent].name)
            parent = by_id[parent].parent
        texts.append(" > ".join(path))
    return texts


def calibrate(
    model: TagModel, head: TagHead, tokenizer: Any, prep: Prepared, config: TrainConfig, out: Path
) -> dict[str, Any]:
    """Fit the temperature, per-tag thresholds and zero-shot calibration on the validation split.

    Writes ``calibration.json``; deterministic for a given model and data.
    """
    val = prep.split.val
    logits, emb = score(model, head, tokenizer, [prep.records[i].text for i in val], config.max_length)
    y, mask = prep.y[val], prep.mask[val]
    temperature = fit_temperature(logits, y, mask)
    probs = 1.0 / (1.0 + np.exp(-logits / temperature))
    thresholds, decision_rule = choose_thresholds(
        probs, y, mask, prep.vocab, config.target_precision, config.threshold_min_positives, config.min_threshold,
        config.seed,
    )  # fmt: skip
    tag_emb = embed(model, tokenizer, tag_texts(prep.vocab), config.max_length)
    zs_threshold, zs_scale = fit_zero_shot(emb.astype(np.float64) @ tag_emb.T.astype(np.float64), y, mask)
    calibration = {
        "temperature": temperature,
        "thresholds": thresholds.tolist(),
        "fingerprint": prep.fingerprint,
        "zero_shot_threshold": zs_threshold,
        "zero_shot_scale": zs_scale,
        "decision_rule": decision_rule,
    }
    (out / CALIBRATION_FILE).write_text(json.dumps(calibration))
    return calibration


def recalibrate(out: Path) -> dict[str, Any]:
    """Re-run :func:`calibrate` for the finished run in ``out`` (e.g. after a calibration change)."""
    run = load_trained(out)
    return calibrate(run.model, run.head, load_tokenizer(), prepare(run.config), run.config, Path(out))


class TrainedRun(NamedTuple):
    """A finished run: its settings, vocabulary, encoder (eval mode), served head and calibration."""

    config: TrainConfig
    vocab: list[VocabEntry]
    model: TagModel
    head: TagHead
    calibration: dict[str, Any]


def load_trained(out: Path) -> TrainedRun:
    """Everything a finished run in ``out`` left behind, loaded."""
    out = Path(out)
    config = TrainConfig.model_validate_json((out / CONFIG_FILE).read_text())
    vocab = [VocabEntry.model_validate(v) for v in json.loads((out / VOCAB_FILE).read_text())]
    model = TagModel(len(vocab), config_only=True)
    model.load_state_dict(torch.load(out / MODEL_FILE, weights_only=True))
    calibration = json.loads((out / CALIBRATION_FILE).read_text())
    return TrainedRun(config, vocab, model.eval(), TagHead.load(out), calibration)
