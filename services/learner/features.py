"""Feature dicts and labels of the engagement model P(engagement | user, tag).

Pure functions only: no I/O, no model state. Both model families read the
same ``(user, tag)`` pair and differ only in how it becomes a feature dict.

Examples
--------
>>> fm_features("u1", "t9")
{'user=u1': 1.0, 'tag=t9': 1.0}
>>> sorted(lr_features("u1", "t9"))
['tag=t9', 'user=u1', 'user×tag=u1|t9']
>>> engagement_weight(FeedbackType.PURCHASE)
3.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from shared.events import FeedbackType

ModelKind = Literal["lr", "lr-river", "fm"]
Features = dict[str, float]

# Strength of each engagement as a sample weight: a purchase says more than a click.
ENGAGEMENT_WEIGHTS: dict[FeedbackType, float] = {
    FeedbackType.CLICK: 1.0,
    FeedbackType.ADD_TO_CART: 2.0,
    FeedbackType.PURCHASE: 3.0,
}
# An impression that no engagement followed within the window is one negative of this weight.
NEGATIVE_WEIGHT = 1.0

# Merchant judgements on the tagging itself say nothing about a shopper's taste.
IGNORED_TYPES: frozenset[FeedbackType] = frozenset({FeedbackType.TAG_ACCEPT, FeedbackType.TAG_REJECT})


def is_engagement(kind: FeedbackType) -> bool:
    """True for the feedback types that are positives (click, cart, purchase)."""
    return kind in ENGAGEMENT_WEIGHTS


def engagement_weight(kind: FeedbackType) -> float:
    """Sample weight of a positive of this type; 0 for non-engagements."""
    return ENGAGEMENT_WEIGHTS.get(kind, 0.0)


def fm_features(user: str, tag: str) -> Features:
    """One-hot user and tag: the factorization machine learns their interaction itself."""
    return {f"user={user}": 1.0, f"tag={tag}": 1.0}


def lr_features(user: str, tag: str) -> Features:
    """User, tag and their explicit cross: a linear model cannot form the interaction alone."""
    return {f"user={user}": 1.0, f"tag={tag}": 1.0, f"user×tag={user}|{tag}": 1.0}


def tag_only_features(tag: str) -> Features:
    """Features of a tag for a user the model has never seen (the tag's prior)."""
    return {f"tag={tag}": 1.0}


FEATURIZERS: dict[ModelKind, Callable[[str, str], Features]] = {
    "lr": lr_features,
    "lr-river": lr_features,
    "fm": fm_features,
}


def featurizer(kind: ModelKind) -> Callable[[str, str], Features]:
    """The feature function of a model kind (looked up by name so models pickle cleanly)."""
    try:
        return FEATURIZERS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(FEATURIZERS)}") from None
