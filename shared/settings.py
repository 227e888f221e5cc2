"""The one settings object of tagloop.

Every value comes from an environment variable with the ``TAGLOOP_`` prefix
(nested fields use ``__``: ``TAGLOOP_KAFKA__BOOTSTRAP_SERVERS``), then from the
address file that ``tagloop dev up`` writes (``<state_dir>/stack.json``), then
from the defaults below. Environment variables always win, so production never
reads the local stack file by accident.

Examples
--------
>>> s = Settings(kafka=KafkaSettings(bootstrap_servers="k1:9092"))
>>> s.kafka.bootstrap_servers
'k1:9092'
>>> s.topics.tags
'listing-tags'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

STACK_FILE_NAME = "stack.json"


def default_state_dir() -> Path:
    """Where the local stack keeps its addresses, logs and data (``.tagloop`` in the cwd)."""
    return Path(os.environ.get("TAGLOOP_STATE_DIR", ".tagloop")).resolve()


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    # Security fields are passed through unchanged to confluent-kafka and aiokafka.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # The local tansu broker only lets a consumer join after ~half the session
    # timeout; 6 s keeps tests fast there and is a sane value on Apache Kafka too.
    session_timeout_ms: int = 6000
    client_id: str = "tagloop"
    # The largest record a tagloop producer writes: the topics' max.message.bytes (Kafka's default
    # is ~1 MB). Dead letters are cut to fit it, so a huge bad record can never stop a service.
    max_record_bytes: int = 1_000_000


class TopicSettings(BaseModel):
    listings: str = "listings"
    tags: str = "listing-tags"
    feedback: str = "feedback"
    dead_letter: str = "dead-letter"
    user_affinity: str = "user-affinity"
    shadow_tags: str = "listing-tags-shadow"  # a candidate's tags in shadow mode (never served)
    partitions: int = 4
    replication_factor: int = 1

    def suffixed(self, suffix: str) -> TopicSettings:
        """The same topics under names ending in ``-suffix``: private topics for a test or benchmark."""
        names = ("listings", "tags", "feedback", "dead_letter", "user_affinity", "shadow_tags")
        return self.model_copy(update={n: f"{getattr(self, n)}-{suffix}" for n in names})


class TritonSettings(BaseModel):
    http_url: str = "127.0.0.1:8000"
    grpc_url: str = "127.0.0.1:8001"
    encoder_model: str = "minilm_encoder"
    tag_model: str = "tag_model"
    timeout_s: float = 30.0


class TaggerSettings(BaseModel):
    """The tagger (``TAGLOOP_TAGGER__*``)."""

    # How often a tagger re-reads the model registry (champion, shadow, canary): a promotion or a
    # rollback reaches every tagger within this many seconds.
    rollout_refresh_s: float = 5.0
    # Each tag carries its evidence (terms, embedding share, origin; TagEvent version 3). Off:
    # it costs a second pass over every listing's terms and makes each event several times larger.
    explain_tags: bool = False
    # Listings sampled per registry refresh into `tagger_listing_samples` (the trainer's
    # embedding-drift windows): ~700/h per tagger at the default refresh, enough for an MMD test.
    listing_sample_size: int = Field(1, ge=0)
    listing_sample_retention_h: float = Field(336.0, gt=0)  # twice the drift reference window


class LearnerSettings(BaseModel):
    """The online learner, its API and its user-affinity publisher (``TAGLOOP_LEARNER__*``)."""

    name: str = "default"  # checkpoints and the consumer group are per learner name
    model: Literal["lr", "lr-river", "fm"] = "lr"
    # Chosen by `tagloop eval affinity` (bench/results/learner.md): AdaGrad lets one user's rare
    # user×tag crosses move fast while popular tags settle.
    learning_rate: float = 1.0
    adagrad: bool = True
    # A checkpoint pickles the whole model: at ~10k events/s, every 50k events (or 10 s) is plenty.
    checkpoint_every: int = 50_000  # events between checkpoints ...
    checkpoint_interval_s: float = 10.0  # ... or seconds, whichever comes first
    checkpoints_kept: int = 3
    # Snapshot by fork (copy-on-write): the loop pauses ~20 ms instead of a full pickle.
    fork_checkpoints: bool = True
    impression_window_s: float = 1800.0
    dedup_window: int = 200_000
    poll_batch: int = 1000
    # user-affinity publishing: at most once per user per interval, and a global rate
    top_k: int = 10
    publish_min_interval_s: float = 5.0
    publish_max_per_s: float = 10.0  # also bounds the CPU spent on top-k instead of learning
    # Bearer token of the API; empty falls back to the services' shared TAGLOOP_API_TOKEN.
    api_token: SecretStr = SecretStr("")
    http_host: str = "127.0.0.1"
    http_port: int = 8090
    refresh_interval_s: float = 2.0  # how often `serve` looks for a newer checkpoint


class TrainerSettings(BaseModel):
    """The trainer service: triggers, label building, replay, gate, canary, exploration (``TAGLOOP_TRAINER__*``).

    A trigger only starts an evaluation job; a model reaches shoppers only through the gate and a canary.
    """

    # How often `tagloop trainer run` judges a canary or evaluates the triggers: fast enough that a
    # bad canary is rolled back within a minute, slow enough that the label query is no load.
    tick_interval_s: float = Field(30.0, gt=0)

    # Seed of every random choice of the trainer (replay sample, MMD subsample and permutations):
    # the same inputs give the same training set and the same drift verdict on every machine.
    seed: int = 0

    # --- triggers ---------------------------------------------------------------------------
    schedule_interval_h: float = Field(24.0, gt=0)  # catalog and taste move over days: a daily refresh catches both
    # A scheduled job with (almost) no new labels would refit the same data: skip it.
    schedule_min_weighted_labels: float = Field(50.0, ge=0)
    volume_weighted_labels: float = Field(500.0, gt=0)  # ~500 weighted labels move the per-tag SVMs measurably
    cooldown_h: float = Field(6.0, ge=0)  # a noisy drift signal must not start a job on every evaluation tick
    drift_reference_window_h: float = Field(168.0, gt=0)  # a week: smooths the weekday/weekend cycle
    drift_recent_window_h: float = Field(24.0, gt=0)  # a day: long enough to count, short enough to react
    drift_min_judgements: int = Field(100, ge=1)  # merchant accepts+rejects per window before a rate is trusted
    drift_min_impressions: int = Field(2_000, ge=1)  # impressions per window: CTRs are small, they need many
    acceptance_drop_tolerance: float = Field(0.05, ge=0, le=1)  # absolute drop of the acceptance rate (5 points)
    ctr_drop_tolerance: float = Field(0.2, ge=0, le=1)  # relative drop of CTR (CTRs of ~2 % make absolute useless)
    # MMD costs O(n²) per window pair and permutation: 500 embeddings per window keep it under a second.
    mmd_sample_size: int = Field(500, ge=10)
    mmd_min_samples: int = Field(50, ge=5)  # fewer embeddings in a window: no test (the p-value would be noise)
    mmd_permutations: int = Field(200, ge=20)  # p-value resolution 1/201, well below the threshold
    mmd_p_value: float = Field(0.01, gt=0, lt=1)  # strict: the test runs every tick, false alarms add up

    # --- labels from feedback ---------------------------------------------------------------
    # Shopper behaviour becomes a weak label when a tag's engaged-shopper rate per examined impression
    # is clearly above (positive) or below (negative) this share of the window's pooled rate: the
    # Wilson bound at z = weak_label_z must clear the line (clicks over expected clicks, COEC).
    # A rate, not a count, so the rule holds at 6 impressions per tag and at 6,000.
    weak_label_coec: float = Field(0.5, gt=0)
    weak_label_z: float = Field(1.0, gt=0)  # ~84 % one-sided: a stray click on a much-seen tag is no positive
    # A merchant's judgement is ground truth like a catalog label (weight 1 in the head's fit); more
    # let a few hundred judged listings, all about tags the model already shows, outweigh the catalog.
    strong_label_weight: float = Field(1.0, gt=0)
    weak_label_weight: float = Field(0.5, gt=0)  # shopper behaviour is weaker evidence than either
    # Every label is weighed by P(it is right): the share of right tags among shown and among
    # explored tags comes from the merchants' verdicts, their error rate from this setting (audit
    # it); shoppers' labels are wrong this often either way (measured 2-12 % on a demo run). Without
    # it a demo's explored guesses, 99 % wrong, got more accepts from merchant slips than right ones.
    merchant_error_rate: float = Field(0.05, ge=0, lt=0.5)
    weak_label_error_rate: float = Field(0.1, ge=0, lt=0.5)
    label_prior_min_judgements: int = Field(30, ge=1)  # verdicts per group before its prior is trusted
    # p(examine | position) = 1 / position**eta (position 1 = top); eta = 1 is the usual first guess
    # until a randomisation experiment measures it.
    propensity_eta: float = Field(1.0, ge=0)
    replay_share: float = Field(0.2, ge=0, lt=1)  # share of original labels in every training set: keeps old knowledge

    # --- gate (candidate vs champion) ------------------------------------------------------
    gate_golden_micro_f1_tolerance: float = Field(0.005, ge=0)  # about the golden set's sampling noise
    gate_slice_f1_tolerance: float = Field(0.05, ge=0)  # a tag may wobble, not collapse
    gate_slice_min_support: int = Field(20, ge=1)  # below this a tag's F1 moves by 0.05 with one example
    gate_slice_z: float = Field(2.0, ge=0)  # and a drop must exceed this many standard errors of the tag's F1
    # Floors catch a broken candidate (shuffled labels) without blocking a weak first model.
    gate_floor_micro_f1: float = Field(0.3, ge=0, le=1)
    gate_floor_coverage: float = Field(0.5, ge=0, le=1)  # share of golden listings given at least one tag
    gate_recent_min_delta: float = Field(0.0, ge=0)  # the candidate must be strictly better on recent feedback
    gate_recent_min_examples: int = Field(30, ge=1)  # a recent holdout smaller than this cannot show improvement
    # Share of listings whose feedback is kept out of training to judge candidates (by a hash of the id):
    # 0.3, not 0.2, because evidence is what the recent check lacks (measured: bench/results/loop.md).
    gate_recent_holdout_share: float = Field(0.3, gt=0, lt=1)
    # An explored label counts 1/p(explored) times on the recent holdout, at most this many: a rarely
    # explored tag's weight would make the score hinge on a handful of labels (clipped inverse propensity).
    gate_explored_max_weight: float = Field(10.0, ge=1)

    # --- canary -----------------------------------------------------------------------------
    canary_share: float = Field(0.1, ge=0, le=1)  # a tenth of listings: a bad model hurts few, data comes fast
    canary_min_impressions: int = Field(1_000, ge=1)  # per arm before CTRs are compared
    canary_min_judgements: int = Field(30, ge=0)  # per arm before acceptance is compared; 0: CTR alone may decide
    # Listings (the unit canary routing randomises) with feedback on their shown tags, per arm, before
    # CTR or acceptance are compared: one listing's ~80 impressions are one draw, not 80 (measured: a
    # demo canary was rolled back 4 s in, on 180 impressions of 5 listings, CTR 0.011 vs 0.054).
    canary_min_listings: int = Field(30, ge=2)
    canary_min_requests: int = Field(200, ge=1)  # tagging requests per arm before p99 latency means anything
    canary_alpha: float = Field(0.05, gt=0, lt=1)  # one-sided z-test level for "the candidate is worse"
    canary_max_error_rate: float = Field(0.01, ge=0, le=1)  # failed tagging requests of the candidate
    canary_max_p99_latency_ratio: float = Field(1.5, ge=1)  # candidate p99 / champion p99
    canary_min_exposure_ratio: float = Field(0.5, ge=0, le=1)  # candidate / champion impressions per listing

    # --- exploration ------------------------------------------------------------------------
    # Share of below-threshold candidate tags published as exploratory, so feedback can confirm
    # tags the model is unsure of (recall); small, because every one is a likely-wrong tag shown.
    exploration_share: float = Field(0.02, ge=0, le=1)
    exploration_max_tags_per_listing: int = Field(1, ge=0)  # a listing never shows more than one guess
    exploration_min_score: float = Field(0.1, ge=0, le=1)  # candidates scored below this are noise, not guesses

    # --- deep job (services/trainer/deep_job.py) ---------------------------------------------
    # What a fired trigger runs. "fast" by measurement: at the same data the deep job's candidates
    # scored no better and cost 5-10x the CPU (bench/results/fast_job.md, "Deep job").
    job_kind: Literal["fast", "deep"] = "fast"
    # A step costs ~2 CPU-s with LoRA, ~4 in full, at batch 16 (bench/results/fast_job.md): the cap
    # keeps a deep job to minutes.
    deep_max_steps: int = Field(150, ge=1)
    deep_batch_size: int = Field(16, ge=1)  # small batches: more steps per CPU-minute, same rows seen
    # "lora" or "full": LoRA measured equal or better test F1 at the same step cap for half the CPU
    # (bench/results/fast_job.md, "Deep job"); both export a plain (merged) ONNX encoder.
    deep_adapter: Literal["lora", "full"] = "lora"
    deep_lr: float = Field(3e-5, gt=0)  # full fine-tune: below tagloop train's 8e-5, it starts from a tuned encoder
    deep_lora_lr: float = Field(5e-4, gt=0)  # LoRA's low-rank updates need a larger step to move as far
    deep_lora_rank: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _mmd_threshold_reachable(self) -> TrainerSettings:
        # The smallest permutation p-value is 1 / (1 + permutations): below the threshold or drift never fires.
        if 1.0 / (1 + self.mmd_permutations) >= self.mmd_p_value:
            raise ValueError(f"mmd_permutations={self.mmd_permutations} can never reach mmd_p_value={self.mmd_p_value}")
        return self


class OpsSettings(BaseModel):
    """Where services serve /metrics, /healthz and /readyz (``TAGLOOP_OPS__*``, :mod:`shared.ops_http`)."""

    # Loopback unless a container sets 0.0.0.0: metrics tell a lot about the business and need no auth.
    host: str = "127.0.0.1"
    trainer_port: int | None = None  # `tagloop trainer run --metrics-port`; None: no endpoint


class Settings(BaseSettings):
    """All configuration of every tagloop service."""

    model_config = SettingsConfigDict(
        env_prefix="TAGLOOP_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    triton: TritonSettings = Field(default_factory=TritonSettings)
    # "json": one object per log line with event/listing ids and model versions (shared/log_setup.py).
    log_format: Literal["text", "json"] = "text"
    # May carry a password: kept out of the settings' repr (logs, tracebacks).
    database_url: str = Field("postgresql://postgres@127.0.0.1:5432/postgres", repr=False)
    state_dir: Path = Field(default_factory=default_state_dir)
    data_dir: Path = Path("../shared/data")
    triton_model_repository: Path = Path("triton_models")
    # Bearer token shared by the services' HTTP APIs (a service's own token wins).
    api_token: SecretStr = SecretStr("")
    tagger: TaggerSettings = Field(default_factory=TaggerSettings)
    learner: LearnerSettings = Field(default_factory=LearnerSettings)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    ops: OpsSettings = Field(default_factory=OpsSettings)

    @model_validator(mode="after")
    def _shared_api_token(self) -> Settings:
        if not self.learner.api_token.get_secret_value() and self.api_token.get_secret_value():
            self.learner = self.learner.model_copy(update={"api_token": self.api_token})
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        stack = InitSettingsSource(settings_cls, init_kwargs=read_stack_file())
        return (init_settings, env_settings, dotenv_settings, stack, file_secret_settings)


def stack_file(state_dir: Path | None = None) -> Path:
    return (state_dir or default_state_dir()) / STACK_FILE_NAME


def read_stack_file(state_dir: Path | None = None) -> dict[str, Any]:
    """Addresses written by ``tagloop dev up``; empty when no local stack runs."""
    path = stack_file(state_dir)
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data.get("settings", {})
