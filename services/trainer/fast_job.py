"""The fast job: refit the served head and its thresholds on the current encoder, export a candidate.

Minutes on a 2-core CPU where fine-tuning takes hours: the encoder stays what it is (the
champion's, or the pretrained MiniLM when no trained version exists), so the job only

1. embeds the training texts with that encoder (:mod:`services.trainer.embeddings`, cached
   on disk: a job embeds only texts no earlier job saw under the same encoder);
2. refits the head -- one linear SVM per tag over [word TF-IDF, k x embedding]
   (:func:`services.trainer.head.fit_head`) -- with per-(listing, tag) sample weights from
   the labels (:mod:`services.trainer.job_input`), on the training side of the leak-free split;
3. re-tunes temperature, per-tag thresholds and zero-shot calibration on the validation side
   and measures the test side (the same rules and split as ``tagloop train``);
4. exports a version through the one export path (:func:`services.trainer.export.write_version`),
   hard-linking the champion's encoder file instead of exporting it again;
5. registers it as ``candidate`` with the job id, the dataset fingerprint and the metrics.

``tagloop train --quick`` (:func:`quick_train`) is the same fit over the catalog with the
pretrained encoder, for users without a fine-tuned model.

Examples
--------
>>> result = run_fast_job(job, Path("triton_models"), base_version_dir=champion_dir,   # doctest: +SKIP
...                       registry=ModelRegistry(settings), cache_dir=settings.state_dir / "embeddings")
>>> result.version, result.metrics["micro_f1"]                                        # doctest: +SKIP
(2, 0.93)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.trainer.embeddings import EmbeddingCache, PretrainedEncoder, TextEncoder, VersionEncoder, embed_texts
from services.trainer.evaluate import tag_metrics
from services.trainer.export import BASE_ENCODER, ReusedEncoder, TorchEncoder, VersionSpec, write_version
from services.trainer.head import fit_head
from services.trainer.job_input import FastJobInput, dataset_fingerprint, label_arrays, records_from_catalog
from services.trainer.split import Split, group_split
from services.trainer.thresholds import choose_thresholds, fit_temperature, fit_zero_shot
from services.trainer.train import TrainConfig, prepare, tag_texts
from shared.catalog.records import Record
from shared.model_registry import ModelRegistry, ModelStatus, ModelVersion
from shared.model_repository import version_dir
from shared.tagmodel.card import VocabEntry, load_model_card
from shared.tagmodel.decide import close_hierarchy, parent_index


@dataclass(frozen=True)
class FittedVersion:
    """A refitted head with its calibration and test metrics, ready for :func:`write_version`."""

    spec: VersionSpec
    metrics: dict[str, Any]


@dataclass(frozen=True)
class FastJobResult:
    job_id: str
    version: int
    version_dir: Path
    fingerprint: str
    metrics: dict[str, Any]
    registered: ModelVersion | None
    timings: dict[str, float] = field(default_factory=dict)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float64)


def job_split(job: FastJobInput, config: TrainConfig) -> Split:
    """The leak-free split of the job's records (by title) that the head fit and its measurement use."""
    records = [Record(r.listing_id, r.text, ()) for r in job.records]
    return group_split(records, config.val_frac, config.test_frac, config.seed)


def fit_version(
    job: FastJobInput,
    vocab: Sequence[VocabEntry],
    encoder: TextEncoder,
    config: TrainConfig,
    cache: EmbeddingCache | None = None,
    *,
    max_length: int = 64,
    base_encoder: str = BASE_ENCODER,
    embedding_weight: float | None = None,
    timings: dict[str, float] | None = None,
) -> FittedVersion:
    """Steps 1-3 of the module: embeddings, weighted head fit, calibration, test metrics.

    ``config`` supplies the split (``val_frac``, ``test_frac``, ``seed``), the head
    (``head_c``, and ``head_embedding_weight`` unless ``embedding_weight`` is given) and the
    threshold rules (``target_precision``, ``threshold_min_positives``, ``min_threshold``),
    exactly as in ``tagloop train``.
    """
    embedding_weight = config.head_embedding_weight if embedding_weight is None else embedding_weight
    timings = {} if timings is None else timings
    vocab = list(vocab)
    arrays = label_arrays(job, vocab)
    y, mask, weight = arrays.y, arrays.mask, arrays.weight
    texts = [r.text for r in job.records]
    split = job_split(job, config)
    train, val, test = split.train, split.val, split.test
    if not train:
        raise ValueError("no training rows: the job's records all fall on the validation or test side")

    started = time.perf_counter()
    emb = embed_texts(encoder, texts, cache)
    tag_emb = embed_texts(encoder, tag_texts(vocab), cache)
    timings["embed_s"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    head = fit_head(
        [texts[i] for i in train], emb[train], y[train], mask[train],
        c=config.head_c, embedding_weight=embedding_weight, seed=config.seed, weights=weight[train],
    )  # fmt: skip
    timings["fit_s"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    known_val = mask[val] * (weight[val] > 0)
    logits_val = head.logits([texts[i] for i in val], emb[val])
    temperature = fit_temperature(logits_val, y[val], known_val)
    thresholds, decision_rule = choose_thresholds(
        _sigmoid(logits_val / temperature), y[val], known_val, vocab,
        config.target_precision, config.threshold_min_positives, config.min_threshold, config.seed,
    )  # fmt: skip
    zero_shot = (0.5, 20.0)
    # Only listings with a complete tag set say how similarity relates to "has the tag": a
    # feedback-only listing's known cells are mostly the tags it was shown (positives), which
    # would calibrate zero-shot to fire on nearly every category.
    complete = np.array([r.tag_ids is not None for r in job.records], dtype=bool)
    known_zero_shot = known_val * complete[val][:, None]
    if known_zero_shot.any():
        sims = emb[val].astype(np.float64) @ tag_emb.T.astype(np.float64)
        zero_shot = fit_zero_shot(sims, y[val], known_zero_shot)
    probs_test = _sigmoid(head.logits([texts[i] for i in test], emb[test]) / temperature)
    pred, _ = close_hierarchy(probs_test >= thresholds, probs_test, parent_index(vocab))
    metrics: dict[str, Any] = tag_metrics(y[test], pred, mask[test], vocab)
    timings["calibrate_s"] = round(time.perf_counter() - started, 2)

    metrics.update(
        head_embedding_weight=embedding_weight, n_train=len(train), n_val=len(val), n_test=len(test), n_tags=len(vocab),
        labels_applied=arrays.labels_applied, labels_unknown_listing=arrays.labels_unknown_listing,
        labels_unknown_tag=arrays.labels_unknown_tag, decision_rule=decision_rule,
    )  # fmt: skip
    calibration = {
        "temperature": temperature,
        "thresholds": thresholds.tolist(),
        "fingerprint": dataset_fingerprint(job),
        "zero_shot_threshold": zero_shot[0],
        "zero_shot_scale": zero_shot[1],
    }
    spec = VersionSpec(
        vocab=vocab, head=head, calibration=calibration, metrics=metrics, max_length=max_length,
        embedding_dim=int(emb.shape[1]), seed=config.seed, base_encoder=base_encoder,
        encoder_precision=config.encoder_precision,
    )  # fmt: skip
    return FittedVersion(spec, metrics)


def new_job_id(kind: str = "fast") -> str:
    """``<kind>-<UTC time>-<random>``: sortable by start time, unique across processes."""
    return f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def base_version_dir(registry: ModelRegistry, repository: Path, model_name: str) -> Path | None:
    """The champion's version directory (the encoder a fast job keeps), or None without a champion.

    Raises
    ------
    FileNotFoundError
        If the registry names a champion that the repository does not hold.
    """
    champion = registry.champion(model_name)
    if champion is None:
        return None
    path = version_dir(repository, model_name, champion.version)
    if not path.is_dir():
        raise FileNotFoundError(f"{model_name} champion version {champion.version} is not in {repository}")
    return path


def run_fast_job(
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
) -> FastJobResult:
    """Refit the head of ``base_version_dir`` (or of the pretrained encoder) on ``job``; export; register.

    Parameters
    ----------
    job : FastJobInput
        Records and weighted labels (:mod:`services.trainer.job_input`).
    repository : Path
        Model repository the new version is written to (the next free number).
    base_version_dir : Path or None
        The version whose encoder is kept (the champion: :func:`base_version_dir`); its
        vocabulary is the default. None: the pretrained MiniLM, which is then exported.
    vocab : Sequence[VocabEntry] or None
        Tags of the new version; required without a base version.
    config : TrainConfig or None
        Split, head and threshold settings (defaults: those of ``tagloop train``).
    registry : ModelRegistry or None
        Where the version is registered as ``candidate``; None: export only.
    cache_dir : Path or None
        Embedding cache (e.g. ``<state_dir>/embeddings``); None: no cache.
    job_id : str or None
        Training job id recorded with the version; a new one by default.

    Returns
    -------
    FastJobResult
        Version number and directory, fingerprint, metrics, registry row, timings.
    """
    total = time.perf_counter()
    config = config or TrainConfig()
    job_id = job_id or new_job_id("fast")
    cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
    timings: dict[str, float] = {}
    encoder: TextEncoder
    if base_version_dir is not None:
        card = load_model_card(base_version_dir)
        vocab = list(vocab) if vocab is not None else card.vocabulary
        encoder = VersionEncoder(base_version_dir)
        # Refit with the head settings the base version was fitted with (a quick version's differ).
        weight = card.metrics.get("head_embedding_weight")
        fitted = fit_version(job, vocab, encoder, config, cache, max_length=card.max_length,
                             base_encoder=card.base_encoder, timings=timings,
                             embedding_weight=float(weight) if isinstance(weight, int | float) else None)  # fmt: skip
        source: ReusedEncoder | TorchEncoder = ReusedEncoder(base_version_dir)
        base: int | None = card.version
    else:
        if vocab is None:
            raise ValueError("without a base version the job needs a vocabulary")
        encoder = PretrainedEncoder(config.max_length)
        fitted = fit_version(job, vocab, encoder, config, cache, max_length=config.max_length,
                             embedding_weight=config.pretrained_head_embedding_weight, timings=timings)  # fmt: skip
        source, base = _pretrained_torch_encoder(len(vocab)), None

    job_metrics: dict[str, Any] = {"kind": "fast", "id": job_id, "base_version": base}
    if cache is not None:
        job_metrics.update(embeddings_cached=cache.hits, embeddings_computed=cache.misses)
    reason = f"fast job {job_id}: head refit on version {base}" if base else f"fast job {job_id}: pretrained"
    return publish_candidate(repository, model_name, fitted, source, job_metrics, registry=registry, reason=reason,
                             timings=timings, started=total)  # fmt: skip


def publish_candidate(
    repository: Path,
    model_name: str,
    fitted: FittedVersion,
    source: ReusedEncoder | TorchEncoder,
    job_metrics: dict[str, Any],
    *,
    registry: ModelRegistry | None,
    reason: str,
    timings: dict[str, float],
    started: float,
) -> FastJobResult:
    """Export ``fitted`` with ``source`` as the next version (metrics under ``"job"``); register it as candidate.

    The last step of every job kind (fast, deep): one export path, one registry row.
    ``job_metrics`` must hold ``id``; ``started`` is the job's ``time.perf_counter()`` start.
    """
    job_id = str(job_metrics["id"])
    metrics = {**fitted.metrics, "job": job_metrics}
    export_started = time.perf_counter()
    spec = replace(fitted.spec, metrics=metrics)
    path = write_version(repository, model_name, spec, source)
    timings["export_s"] = round(time.perf_counter() - export_started, 2)
    fingerprint = str(spec.calibration["fingerprint"])
    version = int(path.name)
    registered = None
    if registry is not None:
        registered = registry.register(
            model_name, version, status=ModelStatus.CANDIDATE, training_job_id=job_id,
            dataset_fingerprint=fingerprint, metrics=metrics, reason=reason,
        )  # fmt: skip
    timings["total_s"] = round(time.perf_counter() - started, 2)
    return FastJobResult(job_id, version, path, fingerprint, metrics, registered, timings)


def _pretrained_torch_encoder(n_tags: int) -> TorchEncoder:
    from services.trainer.model import EmbeddingModel, TagModel, load_tokenizer

    return TorchEncoder(EmbeddingModel(TagModel(n_tags)), load_tokenizer())


def quick_train(
    config: TrainConfig,
    repository: Path | None,
    model_name: str = "tag_model",
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """``tagloop train --quick``: head and thresholds over the pretrained MiniLM (no fine-tuning).

    The catalog, vocabulary and split are those of ``tagloop train`` (:func:`prepare`); with a
    ``repository`` the result is exported as its next version, else only measured.

    Returns
    -------
    dict
        Test metrics, ``data_fingerprint``, ``timings`` and, when exported, ``exported``.
    """
    prep = prepare(config)
    job = FastJobInput(records_from_catalog(prep.records, config.max_depth), fingerprint=prep.fingerprint)
    if repository is None:
        timings: dict[str, float] = {}
        cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
        fitted = fit_version(job, prep.vocab, PretrainedEncoder(config.max_length), config, cache,
                             max_length=config.max_length, embedding_weight=config.pretrained_head_embedding_weight,
                             timings=timings)  # fmt: skip
        return {**fitted.metrics, "data_fingerprint": prep.fingerprint, "timings": timings}
    result = run_fast_job(job, repository, model_name, vocab=prep.vocab, config=config, cache_dir=cache_dir,
                          job_id=new_job_id("quick"))  # fmt: skip
    return {**result.metrics, "data_fingerprint": result.fingerprint, "timings": result.timings,
            "exported": str(result.version_dir)}  # fmt: skip
