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
    partitions: int = 4
    replication_factor: int = 1

    def suffixed(self, suffix: str) -> TopicSettings:
        """The same topics under names ending in ``-suffix``: private topics for a test or benchmark."""
        names = ("listings", "tags", "feedback", "dead_letter", "user_affinity")
        return self.model_copy(update={n: f"{getattr(self, n)}-{suffix}" for n in names})


class TritonSettings(BaseModel):
    http_url: str = "127.0.0.1:8000"
    grpc_url: str = "127.0.0.1:8001"
    encoder_model: str = "minilm_encoder"
    tag_model: str = "tag_model"
    timeout_s: float = 30.0


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


class Settings(BaseSettings):
    """All configuration of every tagloop service."""

    model_config = SettingsConfigDict(
        env_prefix="TAGLOOP_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    triton: TritonSettings = Field(default_factory=TritonSettings)
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    state_dir: Path = Field(default_factory=default_state_dir)
    data_dir: Path = Path("../shared/data")
    triton_model_repository: Path = Path("triton_models")
    # Bearer token shared by the services' HTTP APIs (a service's own token wins).
    api_token: SecretStr = SecretStr("")
    learner: LearnerSettings = Field(default_factory=LearnerSettings)

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
