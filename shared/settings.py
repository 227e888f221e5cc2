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
from typing import Any

from pydantic import BaseModel, Field, SecretStr
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


class TopicSettings(BaseModel):
    listings: str = "listings"
    tags: str = "listing-tags"
    feedback: str = "feedback"
    dead_letter: str = "dead-letter"
    user_affinity: str = "user-affinity"
    partitions: int = 4
    replication_factor: int = 1


class TritonSettings(BaseModel):
    http_url: str = "127.0.0.1:8000"
    grpc_url: str = "127.0.0.1:8001"
    encoder_model: str = "minilm_encoder"
    tag_model: str = "tag_model"
    timeout_s: float = 30.0


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
