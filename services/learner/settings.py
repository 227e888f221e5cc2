"""Settings of the learner service (``TAGLOOP_LEARNER_*``), separate until folded into ``shared.settings``.

Examples
--------
>>> LearnerSettings(checkpoint_every=100).checkpoint_every
100
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class LearnerSettings(BaseSettings):
    """Configuration of the online learner, its API and its user-affinity publisher."""

    model_config = SettingsConfigDict(env_prefix="TAGLOOP_LEARNER_", extra="ignore", populate_by_name=True)

    name: str = "default"  # checkpoints and the consumer group are per learner name
    model: Literal["lr", "lr-river", "fm"] = "lr"
    # Chosen by `tagloop eval affinity` (docs/results/learner.md): AdaGrad lets one user's rare
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
    # HTTP API
    # Bearer token of the API; TAGLOOP_API_TOKEN (shared by the services) is accepted too.
    api_token: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("TAGLOOP_LEARNER_API_TOKEN", "TAGLOOP_API_TOKEN")
    )
    http_host: str = "127.0.0.1"
    http_port: int = 8090
    refresh_interval_s: float = 2.0  # how often `serve` looks for a newer checkpoint
