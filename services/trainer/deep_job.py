"""The deep job: fine-tune the champion's encoder on the new labels, refit the head, export a candidate.

Where the fast job (:mod:`services.trainer.fast_job`) keeps the encoder, the deep job moves it:

1. **warm start** -- the champion's encoder weights are read back from what the version serves
   (:func:`warm_start`: the ONNX initializers, or the TorchScript module's state), so any exported
   version can be continued, and checked to give the version's own embeddings; without a
   champion, the pretrained MiniLM;
2. **probe** -- the fine-tuning head (one logit per tag) is first fitted alone on the frozen
   embeddings (from the fast job's embedding cache), so the first encoder steps follow a useful
   gradient rather than a random head's;
3. **fine-tune** -- at most ``max_steps`` steps of masked, weighted BCE on the training side of
   the split, each batch ``1 - replay_share`` rows that carry feedback labels and ``replay_share``
   original catalog rows (:func:`mixed_batches`: old knowledge is replayed, not forgotten); the
   whole encoder (``adapter="full"``) or a LoRA adapter (``"lora"``, the ``peft`` library), merged
   into the weights afterwards (:func:`merge_adapter`), so serving never sees an adapter;
4. **head** -- the served head and calibration refitted over the new embeddings exactly as the
   fast job does (:func:`~services.trainer.fast_job.fit_version`);
5. **export** -- the new encoder to ONNX through the one export path, registered as ``candidate``
   (:func:`~services.trainer.fast_job.publish_candidate`); the card's ``metrics.job`` records the
   kind, base version, steps, adapter and warm start, its ``data_fingerprint`` the training set.

Examples
--------
>>> result = run_deep_job(job, Path("triton_models"), base_version_dir=champion_dir,   # doctest: +SKIP
...                       registry=ModelRegistry(url), options=DeepOptions.from_settings(settings.trainer))
>>> result.metrics["job"]["kind"], result.metrics["job"]["adapter"]                   # doctest: +SKIP
('deep', 'lora')
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from services.trainer.embeddings import EmbeddingCache, PretrainedEncoder, TextEncoder, VersionEncoder, embed_texts
from services.trainer.export import BASE_ENCODER, TorchEncoder
from services.trainer.fast_job import FastJobResult, fit_version, job_split, new_job_id, publish_candidate
from services.trainer.job_input import FastJobInput, label_arrays
from services.trainer.model import EmbeddingModel, TagModel, load_tokenizer
from services.trainer.train import TrainConfig, _optimizer, embed, seed_everything, tokenize, train_step
from shared.model_registry import ModelRegistry
from shared.tagmodel.card import VocabEntry, load_model_card
from shared.tagmodel.runtime import ONNX_FILE, TOKENIZER_DIR, TORCHSCRIPT_FILE, TagModelRuntime

if TYPE_CHECKING:
    from shared.settings import TrainerSettings

Adapter = Literal["lora", "full"]
# Warm-starting must reproduce the version's embeddings; float32 ONNX vs torch differ by ~1e-6.
WARM_START_TOLERANCE = 1e-4
_PROBE_TEXTS = ["red cotton shirt for men", "steel water bottle 1 litre", "brown leather wallet", "kids shoes"]
# LoRA on every linear map of the transformer layers (attention and feed-forward), not the unused pooler.
_LORA_TARGETS = r".*layer\.\d+\.(attention\.self\.(query|key|value)|(attention\.output|intermediate|output)\.dense)"


@dataclass(frozen=True)
class DeepOptions:
    """How the encoder is fine-tuned (defaults: :class:`shared.settings.TrainerSettings` ``deep_*``)."""

    max_steps: int = 150
    batch_size: int = 16
    adapter: Adapter = "lora"
    lr: float = 3e-5
    lora_lr: float = 5e-4
    lora_rank: int = 8
    replay_share: float = 0.2
    probe_steps: int = 200  # full-batch Adam steps of the head alone; 0: no probe

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> DeepOptions:
        return cls(max_steps=settings.deep_max_steps, batch_size=settings.deep_batch_size,
                   adapter=settings.deep_adapter, lr=settings.deep_lr, lora_lr=settings.deep_lora_lr,
                   lora_rank=settings.deep_lora_rank, replay_share=settings.replay_share)  # fmt: skip


def mixed_batches(
    labelled: Sequence[int], replay: Sequence[int], steps: int, batch_size: int, replay_share: float, seed: int
) -> list[list[int]]:
    """``steps`` batches of row indices: ``round(batch_size * replay_share)`` replay rows, the rest labelled.

    Each pool is walked in a fresh random order, reshuffled when used up (every row is seen
    before any repeats). With one pool empty, the batches come from the other alone.

    >>> batches = mixed_batches([0, 1, 2, 3], [10, 11, 12, 13, 14], steps=3, batch_size=5, replay_share=0.2, seed=0)
    >>> [sorted(i for i in b if i < 10) for b in batches]  # 4 labelled rows a batch: each one once
    [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    >>> [sum(i >= 10 for i in b) for b in batches]  # and one replayed catalog row
    [1, 1, 1]
    """
    if not labelled and not replay:
        raise ValueError("no training rows to fine-tune on")
    n_replay = round(batch_size * replay_share) if labelled else batch_size
    n_replay = n_replay if replay else 0
    rng = np.random.default_rng(seed)
    labelled_rows, replay_rows = _cycle(labelled, rng), _cycle(replay, rng)
    return [
        [next(labelled_rows) for _ in range(batch_size - n_replay)] + [next(replay_rows) for _ in range(n_replay)]
        for _ in range(steps)
    ]


def _cycle(pool: Sequence[int], rng: np.random.Generator) -> Iterator[int]:
    while pool:
        yield from (int(pool[i]) for i in rng.permutation(len(pool)))


def training_pools(job: FastJobInput, train: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(labelled, replay)`` training rows: those with a weighted label, and distinct original records."""
    first: dict[str, int] = {}
    for r, rec in enumerate(job.records):
        first.setdefault(rec.listing_id, r)
    with_labels = {first[x.listing_id] for x in job.labels if x.listing_id in first and x.weight > 0}
    labelled, replay, seen = [], [], set()
    for r in train:
        rec = job.records[r]
        if r in with_labels:
            labelled.append(r)
        elif rec.tag_ids is not None and first[rec.listing_id] == r:
            key = (rec.text, rec.tag_ids, rec.has_attributes)  # the catalog repeats listings verbatim
            if key not in seen:
                seen.add(key)
                replay.append(r)
    return labelled, replay


def warm_start(version_dir: Path | None, n_tags: int) -> tuple[TagModel, Any, str]:
    """``(model, tokenizer, source)``: a :class:`TagModel` whose encoder is that of ``version_dir``.

    The weights are read from the version's served encoder (``"onnx"``: each linear map's
    transposed MatMul initializer is named by the bias added after it; ``"torchscript"``: the
    traced module's state), then the version's own embeddings are reproduced as a check. Without
    a version: the pretrained MiniLM (``"pretrained"``). The tag head is new (random).

    Raises
    ------
    ValueError
        If a parameter of the encoder is missing from the version or the embeddings differ.
    """
    model = TagModel(n_tags)
    if version_dir is None:
        return model, load_tokenizer(), "pretrained"
    card = load_model_card(version_dir)
    if card.export_format == "onnx":
        state = _onnx_state(Path(version_dir) / ONNX_FILE)
    else:
        state = dict(torch.jit.load(str(Path(version_dir) / TORCHSCRIPT_FILE), map_location="cpu").state_dict())
    _load_encoder_state(model, state)
    tokenizer = load_tokenizer(Path(version_dir) / TOKENIZER_DIR)
    ours = embed(model, tokenizer, _PROBE_TEXTS, card.max_length)
    theirs = TagModelRuntime(Path(version_dir)).embed(_PROBE_TEXTS)
    gap = float(np.abs(ours - theirs).max())
    if gap > WARM_START_TOLERANCE:
        raise ValueError(f"warm start from {card.export_format} does not reproduce version {card.version} ({gap:.2e})")
    return model, tokenizer, card.export_format


def _onnx_state(path: Path) -> dict[str, Any]:
    """The exported module's state from an ONNX file: ``{"encoder.<param>": tensor}``."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {name: torch.from_numpy(v.copy()) for name, v in values.items() if not name.startswith("onnx::")}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        weight = next((i for i in node.input if i.startswith("onnx::") and i in values), None)
        if node.op_type != "MatMul" or weight is None:
            continue
        for add in consumers.get(node.output[0], []):
            bias = next((i for i in add.input if i.endswith(".bias") and i in values), None)
            if add.op_type == "Add" and bias is not None:  # y = x @ W.T + b was exported as Add(b, MatMul(x, W.T))
                state[bias.removesuffix(".bias") + ".weight"] = torch.from_numpy(values[weight].T.copy())
    return state


def _load_encoder_state(model: TagModel, state: dict[str, Any]) -> None:
    own = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    params = dict(model.encoder.named_parameters())
    missing = sorted(k for k in params if k not in own and not k.startswith("pooler."))  # the pooler is unused
    wrong = sorted(k for k in params if k in own and tuple(own[k].shape) != tuple(params[k].shape))
    if missing or wrong:
        raise ValueError(f"version lacks encoder weights {missing[:3]} / has wrong shapes {wrong[:3]}")
    model.encoder.load_state_dict({k: v for k, v in own.items() if k in params}, strict=False)


def add_lora(model: TagModel, rank: int) -> int:
    """Freeze the encoder and wrap it with a LoRA adapter (``peft``); return the trainable parameter count."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=_LORA_TARGETS, bias="none")
    model.encoder = get_peft_model(model.encoder, config)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_adapter(model: TagModel) -> TagModel:
    """Fold a LoRA adapter into the encoder's weights (a plain transformer again); no-op without one."""
    from peft import PeftModel

    if isinstance(model.encoder, PeftModel):
        model.encoder = model.encoder.merge_and_unload()
    return model


class TunedEncoder:
    """A fine-tuned :class:`TagModel`'s embedding as a :class:`TextEncoder` (for the head refit)."""

    def __init__(self, model: TagModel, tokenizer: Any, max_length: int, key: str) -> None:
        self.model, self.tokenizer, self.max_length, self._key = model, tokenizer, max_length, key

    @property
    def key(self) -> str:
        return self._key

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return embed(self.model, self.tokenizer, texts, self.max_length)


@dataclass(frozen=True)
class FineTuned:
    """The fine-tuned model (adapter not yet merged) and what the run did."""

    model: TagModel
    tokenizer: Any
    stats: dict[str, Any]


def fine_tune(
    job: FastJobInput,
    vocab: Sequence[VocabEntry],
    base_version_dir: Path | None,
    config: TrainConfig,
    options: DeepOptions,
    *,
    max_length: int,
    cache: EmbeddingCache | None = None,
) -> FineTuned:
    """Steps 1-3 of the module: warm start, probe, ``options.max_steps`` steps on the mixed batches."""
    seed_everything(config.seed)
    started, cpu = time.perf_counter(), time.process_time()
    model, tokenizer, source = warm_start(base_version_dir, len(vocab))
    arrays = label_arrays(job, vocab)
    labelled, replay = training_pools(job, job_split(job, config).train)
    batches = mixed_batches(labelled, replay, options.max_steps, options.batch_size, options.replay_share, config.seed)
    rows = sorted({r for b in batches for r in b})
    stats: dict[str, Any] = {
        "warm_start": source,
        "warm_start_s": round(time.perf_counter() - started, 2),
        "pool_labelled": len(labelled),
        "pool_replay": len(replay),
        "rows_seen": len(rows),
    }

    y, w = torch.from_numpy(arrays.y), torch.from_numpy(arrays.weight)
    if options.probe_steps:
        probe_started = time.perf_counter()
        base: TextEncoder = VersionEncoder(base_version_dir) if base_version_dir else PretrainedEncoder(max_length)
        emb = embed_texts(base, [job.records[r].text for r in rows], cache)
        stats["probe_loss"] = _probe_head(model, torch.from_numpy(emb), y[rows], w[rows], options.probe_steps)
        stats["probe_s"] = round(time.perf_counter() - probe_started, 2)

    lr = options.lora_lr if options.adapter == "lora" else options.lr
    stats["trainable_params"] = (add_lora(model, options.lora_rank) if options.adapter == "lora"
                                 else sum(p.numel() for p in model.parameters()))  # fmt: skip
    opt, sched = _optimizer(model, config.model_copy(update={"lr": lr}), options.max_steps)
    texts = [r.text for r in job.records]
    encoded: list[list[int]] = [[] for _ in texts]
    for r, ids in zip(rows, tokenize(tokenizer, [texts[r] for r in rows], max_length), strict=True):
        encoded[r] = ids
    tune_started = time.perf_counter()
    model.train()
    losses = [float(train_step(model, opt, sched, encoded, b, y, w, tokenizer.pad_token_id).item()) for b in batches]
    model.eval()
    k = max(1, min(10, len(losses) // 2))
    stats.update(steps=len(batches), lr=lr, loss_first=round(float(np.mean(losses[:k])), 4),
                 loss_last=round(float(np.mean(losses[-k:])), 4),
                 finetune_s=round(time.perf_counter() - tune_started, 2),
                 cpu_s=round(time.process_time() - cpu, 1))  # fmt: skip
    return FineTuned(model, tokenizer, stats)


def _probe_head(model: TagModel, emb: torch.Tensor, y: torch.Tensor, w: torch.Tensor, steps: int) -> float:
    """Fit the fine-tuning head alone on frozen embeddings (full batch); return the final loss."""
    params = [model.head.weight, model.head.bias, model.scale]
    opt = torch.optim.Adam(params, lr=1e-2)
    loss = torch.zeros(())
    for _ in range(steps):
        logits = model.head(emb) * model.scale
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * w).sum() / len(emb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return round(float(loss.item()), 4)


def run_deep_job(
    job: FastJobInput,
    repository: Path,
    model_name: str = "tag_model",
    *,
    base_version_dir: Path | None = None,
    vocab: Sequence[VocabEntry] | None = None,
    config: TrainConfig | None = None,
    registry: ModelRegistry | None = None,
    cache_dir: Path | None = None,
    job_id: str | None = None,
    options: DeepOptions | None = None,
) -> FastJobResult:
    """Fine-tune the encoder of ``base_version_dir`` on ``job``, refit the head; export; register.

    Parameters are those of :func:`~services.trainer.fast_job.run_fast_job` (the trainer
    service switches on the job kind only), plus ``options`` (:class:`DeepOptions`; default:
    its defaults). ``cache_dir`` serves the probe's embeddings under the base encoder (a fast
    job on the same champion has computed them); the new encoder's embeddings are not cached.

    Returns
    -------
    FastJobResult
        Version number and directory, fingerprint, metrics (``metrics["job"]["kind"] == "deep"``), timings.
    """
    total = time.perf_counter()
    config = config or TrainConfig()
    options = options or DeepOptions()
    job_id = job_id or new_job_id("deep")
    cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
    base: int | None = None
    max_length, base_encoder, weight = config.max_length, BASE_ENCODER, config.pretrained_head_embedding_weight
    if base_version_dir is not None:
        card = load_model_card(base_version_dir)
        vocab = list(vocab) if vocab is not None else card.vocabulary
        base, max_length, base_encoder = card.version, card.max_length, card.base_encoder
        # The head settings of the encoder it descends from, as a fast job refits them.
        w = card.metrics.get("head_embedding_weight")
        weight = float(w) if isinstance(w, int | float) else config.head_embedding_weight
    if vocab is None:
        raise ValueError("without a base version the job needs a vocabulary")
    vocab = list(vocab)

    tuned = fine_tune(job, vocab, base_version_dir, config, options, max_length=max_length, cache=cache)
    model = merge_adapter(tuned.model)
    timings: dict[str, float] = {k: tuned.stats.pop(k) for k in ("warm_start_s", "probe_s", "finetune_s")
                                 if k in tuned.stats}  # fmt: skip
    fitted = fit_version(job, vocab, TunedEncoder(model, tuned.tokenizer, max_length, f"deep:{job_id}"), config,
                         max_length=max_length, base_encoder=base_encoder, embedding_weight=weight,
                         timings=timings)  # fmt: skip
    job_metrics = {"kind": "deep", "id": job_id, "base_version": base, "adapter": options.adapter,
                   "max_steps": options.max_steps, "batch_size": options.batch_size,
                   "replay_share": options.replay_share, **tuned.stats}  # fmt: skip
    if options.adapter == "lora":
        job_metrics["lora_rank"] = options.lora_rank
    reason = f"deep job {job_id}: {options.adapter} fine-tune, {tuned.stats['steps']} steps, from version {base}"
    return publish_candidate(repository, model_name, fitted, TorchEncoder(EmbeddingModel(model), tuned.tokenizer),
                             job_metrics, registry=registry, reason=reason, timings=timings, started=total)  # fmt: skip
