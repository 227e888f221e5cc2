"""Model version statuses and the moves allowed between them: the registry's rules, pure.

Statuses and the moves allowed between them (:data:`ALLOWED_TRANSITIONS`)::

    candidate -> shadow | canary | champion | rejected | retired
    shadow    -> canary | champion | rejected | retired
    canary    -> champion | rolled-back | rejected | retired
    champion  -> retired | rolled-back
    retired   -> champion                 (a rollback reinstates the previous champion)
    rejected, rolled-back: final

Examples
--------
>>> check_transition(ModelStatus.CANDIDATE, ModelStatus.CANARY)
>>> check_transition(ModelStatus.REJECTED, ModelStatus.CHAMPION)  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
...
InvalidTransition: rejected -> champion is not allowed (allowed: none)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class ModelStatus(StrEnum):
    CANDIDATE = "candidate"
    SHADOW = "shadow"
    CANARY = "canary"
    CHAMPION = "champion"
    RETIRED = "retired"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled-back"


S = ModelStatus
ALLOWED_TRANSITIONS: Mapping[ModelStatus, frozenset[ModelStatus]] = {
    S.CANDIDATE: frozenset({S.SHADOW, S.CANARY, S.CHAMPION, S.REJECTED, S.RETIRED}),
    S.SHADOW: frozenset({S.CANARY, S.CHAMPION, S.REJECTED, S.RETIRED}),
    S.CANARY: frozenset({S.CHAMPION, S.ROLLED_BACK, S.REJECTED, S.RETIRED}),
    S.CHAMPION: frozenset({S.RETIRED, S.ROLLED_BACK}),
    S.RETIRED: frozenset({S.CHAMPION}),
    S.REJECTED: frozenset(),
    S.ROLLED_BACK: frozenset(),
}


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, duplicate registration)."""


class InvalidTransition(RegistryError, ValueError):
    """A status change that :data:`ALLOWED_TRANSITIONS` forbids."""


def check_transition(old: ModelStatus, new: ModelStatus) -> None:
    """Raise :class:`InvalidTransition` unless ``old -> new`` is allowed."""
    allowed = ALLOWED_TRANSITIONS[ModelStatus(old)]
    if ModelStatus(new) not in allowed:
        names = ", ".join(sorted(s.value for s in allowed)) or "none"
        move = f"{ModelStatus(old).value} -> {ModelStatus(new).value}"
        raise InvalidTransition(f"{move} is not allowed (allowed: {names})")


@dataclass(frozen=True)
class ModelVersion:
    """A row of ``model_versions``."""

    model_name: str
    version: int
    status: ModelStatus
    training_job_id: str | None
    dataset_fingerprint: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class StatusChange:
    """A row of ``model_version_history``: ``from_status`` is None for the registration."""

    model_name: str
    version: int
    from_status: ModelStatus | None
    to_status: ModelStatus
    reason: str
    changed_at: datetime
