"""The label builder's adapter: feedback of a time window from Postgres -> labels, composition, fingerprint.

It reads only ``feedback_tag_labels(since, until)``, the SQL function the feedback service owns
and keeps stable (its migration 5; ``feedback_tag_labels_v1`` is the same over all time), never
the feedback tables behind it. Every rule lives in the pure :mod:`services.trainer.feedback_labels`;
this module only turns the function's rows into :class:`~services.trainer.feedback_labels.FeedbackRow`
and calls the pure functions.

The function returns position histograms (``{"3": 2}``: two impressions at the third slot)
rather than weighted sums, so the propensity model (``propensity_eta``) stays the trainer's:
:func:`position_mass` applies :func:`~services.trainer.feedback_labels.examination_propensity`
to them. (It returns click positions too; the rate rule needs only the impressions'.)

Examples
--------
>>> from shared.settings import TrainerSettings
>>> cfg = TrainerSettings(propensity_eta=1.0)
>>> row = feedback_row({"listing_id": "l1", "tag_id": "t1", "impressions": 4, "clicks": 3,
...                     "click_positions": {}, "impression_positions": {"2": 1, "4": 2}}, cfg)
>>> row.examined_impressions    # 1/2 + 2·1/4 + 1 (position unknown)
2.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from services.trainer.feedback_labels import (
    Composition,
    FeedbackRow,
    Label,
    build_labels,
    composition,
    examination_propensity,
    fingerprint,
    mix_replay,
)
from shared.db import connect
from shared.settings import Settings, TrainerSettings

# The columns of the feedback service's contract this adapter uses (it returns a few more).
_QUERY = (
    "SELECT listing_id, tag_id, impressions, clicks, carts, purchases, accepts, rejects,"
    " last_accept_at, last_reject_at, click_positions, impression_positions, exploratory, model_version,"
    " first_ts, last_ts"
    " FROM feedback_tag_labels(%s, %s) ORDER BY listing_id, tag_id"
)
_FETCH_ROWS = 10_000  # rows per round trip of the server-side cursor: memory stays flat on a big window


@dataclass(frozen=True)
class FeedbackWindow:
    """The feedback rows of ``[since, until)`` and the span of the events they count."""

    rows: list[FeedbackRow]
    since: datetime | None
    until: datetime | None
    first_ts: datetime | None = None
    last_ts: datetime | None = None


@dataclass(frozen=True)
class TrainingLabels:
    """A training set's labels with what it is made of and its fingerprint (stored with the job)."""

    labels: list[Label]
    composition: Composition
    fingerprint: str
    window: FeedbackWindow

    def summary(self) -> dict[str, object]:
        """A JSON-ready description: window, rows read, composition and fingerprint."""
        w = self.window
        return {
            "since": w.since.isoformat() if w.since else None,
            "until": w.until.isoformat() if w.until else None,
            "first_ts": w.first_ts.isoformat() if w.first_ts else None,
            "last_ts": w.last_ts.isoformat() if w.last_ts else None,
            "feedback_rows": len(w.rows),
            "fingerprint": self.fingerprint,
            "composition": self.composition.to_dict(),
        }


def position_mass(histogram: Mapping[str, int], events: int, weight: Callable[[int], float]) -> float | None:
    """Σ ``weight(position)`` over the events of a position histogram, plus 1 per event of unknown position.

    ``None`` when no event has a known position (the builder then uses the raw count).

    >>> position_mass({"1": 2, "4": 1}, 5, lambda k: 1.0 / k)   # 2·1 + 1·0.25 + 2 unknown
    4.25
    >>> position_mass({}, 5, lambda k: 1.0 / k) is None
    True
    """
    if not histogram:
        return None
    by_position = sorted((int(p), int(n)) for p, n in histogram.items())  # a fixed order: the same float sum
    known = sum(n for _, n in by_position)
    if known > events:
        raise ValueError(f"position histogram holds {known} events, more than the {events} counted")
    return sum(n * weight(p) for p, n in by_position) + float(events - known)


def feedback_row(record: Mapping[str, Any], settings: TrainerSettings) -> FeedbackRow:
    """One row of ``feedback_tag_labels`` as the pure builder's :class:`FeedbackRow`."""
    eta = settings.propensity_eta
    clicks, impressions = int(record["clicks"]), int(record["impressions"])
    return FeedbackRow(
        listing_id=record["listing_id"],
        tag_id=record["tag_id"],
        impressions=impressions,
        clicks=clicks,
        carts=int(record.get("carts", 0)),
        purchases=int(record.get("purchases", 0)),
        accepts=int(record.get("accepts", 0)),
        rejects=int(record.get("rejects", 0)),
        examined_impressions=position_mass(
            record["impression_positions"], impressions, lambda k: examination_propensity(k, eta)
        ),
        exploratory=bool(record.get("exploratory", False)),
        last_accept_at=record.get("last_accept_at"),
        last_reject_at=record.get("last_reject_at"),
        model_version=record.get("model_version"),
    )


def read_feedback(
    settings_or_url: Settings | str,
    trainer: TrainerSettings,
    since: datetime | None = None,
    until: datetime | None = None,
) -> FeedbackWindow:
    """Feedback rows of ``[since, until)`` (``None``: open) from the feedback service's label function.

    The window filters on event time (``ts``), so the same window gives the same rows later,
    whenever its events were ingested (late events included once they arrived).
    """
    rows: list[FeedbackRow] = []
    first: datetime | None = None
    last: datetime | None = None
    # A named (server-side) cursor streams the rows instead of materialising them client-side.
    with connect(settings_or_url) as conn, conn.cursor(name="trainer_feedback_labels", row_factory=dict_row) as cur:
        cur.itersize = _FETCH_ROWS
        cur.execute(_QUERY, (since, until))
        for record in cur:
            rows.append(feedback_row(record, trainer))
            first = record["first_ts"] if first is None else min(first, record["first_ts"])
            last = record["last_ts"] if last is None else max(last, record["last_ts"])
    return FeedbackWindow(rows, since, until, first, last)


def build_training_labels(
    settings: Settings,
    since: datetime | None = None,
    until: datetime | None = None,
    original: Sequence[Label] = (),
) -> TrainingLabels:
    """The labels of a time window's feedback (plus a replay sample of ``original``), described and fingerprinted.

    Parameters
    ----------
    settings
        Database and :class:`~shared.settings.TrainerSettings` (thresholds, weights, propensity, replay).
    since, until
        Event-time window ``[since, until)``; ``None`` leaves that end open. Rebuilding a past
        window gives the same labels and fingerprint.
    original
        Labels of the original labelled data; when given, ``replay_share`` of the result is a
        sample of them stratified by tag (:func:`~services.trainer.feedback_labels.mix_replay`,
        seeded by ``settings.trainer.seed``).
    """
    cfg = settings.trainer
    window = read_feedback(settings, cfg, since, until)
    labels = build_labels(window.rows, cfg)
    if original:
        labels = mix_replay(labels, original, share=cfg.replay_share, seed=cfg.seed)
    return TrainingLabels(labels, composition(labels), fingerprint(labels), window)
