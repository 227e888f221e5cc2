"""The gate: may a candidate model replace the champion? (pure, like TFX's evaluator; no I/O)

Candidate and champion are scored by the trainer on the same two sets -- a fixed **golden
holdout** (never trained on) and a **recent-feedback holdout** -- and :func:`decide` turns
those scores into a :class:`Decision`. Every check is reported with its figures, passed or
not, so the decision row the service writes explains itself.

Checks (tolerances in :class:`~shared.settings.TrainerSettings`):

1. ``floor_micro_f1`` / ``floor_coverage`` -- golden micro-F1 and coverage at least the floors;
2. ``golden_micro_f1`` -- not below the champion's by more than ``gate_golden_micro_f1_tolerance``;
3. ``slices`` -- no tag with golden support ≥ ``gate_slice_min_support`` loses more than
   ``gate_slice_f1_tolerance`` of F1 and more than ``gate_slice_z`` standard errors of its F1
   (:func:`slice_drop_limit`; a tag the candidate does not score counts as F1 0); the worst
   offenders are listed;
4. ``recent`` -- on the recent holdout (≥ ``gate_recent_min_examples`` examples) the
   candidate's score exceeds the champion's by more than ``gate_recent_min_delta``.

Without a champion only the floors apply; the comparisons are reported as skipped.

Examples
--------
>>> from shared.settings import TrainerSettings
>>> cand = ModelScores(GoldenMetrics(micro_f1=0.62, macro_f1=0.40, coverage=0.95))
>>> d = decide(cand, None, TrainerSettings())
>>> d.blessed, d.reasons[0]
(True, 'PASS floor_micro_f1: golden micro-F1 0.6200 ≥ floor 0.3000')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.settings import TrainerSettings

# How many collapsed slices a reason names (all of them are in the check's figures).
MAX_OFFENDERS_NAMED = 5

Outcome = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class SliceMetric:
    """One tag's F1 on the golden holdout and how many golden listings carry the tag."""

    f1: float
    support: int


@dataclass(frozen=True)
class GoldenMetrics:
    micro_f1: float
    macro_f1: float
    coverage: float  # share of golden listings given at least one tag
    per_tag: Mapping[str, SliceMetric] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelScores:
    """A model's scores on the two holdouts; ``recent`` is micro-F1 or a feedback-agreement score."""

    golden: GoldenMetrics
    recent: float | None = None
    recent_examples: int = 0


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    detail: str
    figures: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return f"{self.outcome.upper()} {self.name}: {self.detail}"


@dataclass(frozen=True)
class Decision:
    """Blessed when no check failed; ``checks`` holds every check, ``reasons`` their one-line texts."""

    blessed: bool
    checks: tuple[Check, ...]

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for the decision row."""
        return {
            "blessed": self.blessed,
            "checks": [
                {"name": c.name, "outcome": c.outcome, "detail": c.detail, "figures": dict(c.figures)}
                for c in self.checks
            ],
        }


def decide(candidate: ModelScores, champion: ModelScores | None, settings: TrainerSettings) -> Decision:
    """Run every check of the gate and bless the candidate only if none fails."""
    checks = [*_floors(candidate.golden, settings)]
    if champion is None:
        checks += [
            Check(name, "skip", "no champion yet: only the floors apply")
            for name in ("golden_micro_f1", "slices", "recent")
        ]
    else:
        checks += [
            _golden_micro_f1(candidate.golden, champion.golden, settings),
            _slices(candidate.golden, champion.golden, settings),
            _recent(candidate, champion, settings),
        ]
    return Decision(blessed=all(c.outcome != "fail" for c in checks), checks=tuple(checks))


def _floors(golden: GoldenMetrics, cfg: TrainerSettings) -> list[Check]:
    out = []
    for name, label, value, floor in (
        ("floor_micro_f1", "golden micro-F1", golden.micro_f1, cfg.gate_floor_micro_f1),
        ("floor_coverage", "golden coverage", golden.coverage, cfg.gate_floor_coverage),
    ):
        ok = value >= floor  # NaN fails
        detail = f"{label} {value:.4f} {'≥' if ok else '<'} floor {floor:.4f}"
        out.append(Check(name, "pass" if ok else "fail", detail, {"value": value, "floor": floor}))
    return out


def _golden_micro_f1(cand: GoldenMetrics, champ: GoldenMetrics, cfg: TrainerSettings) -> Check:
    delta = cand.micro_f1 - champ.micro_f1
    ok = delta >= -cfg.gate_golden_micro_f1_tolerance
    detail = (
        f"candidate {cand.micro_f1:.4f} vs champion {champ.micro_f1:.4f} (Δ {delta:+.4f}, "
        f"tolerance -{cfg.gate_golden_micro_f1_tolerance:g}); macro-F1 {cand.macro_f1:.4f} vs {champ.macro_f1:.4f}"
    )
    figures = {
        "candidate": cand.micro_f1, "champion": champ.micro_f1, "delta": delta,
        "tolerance": cfg.gate_golden_micro_f1_tolerance,
        "candidate_macro_f1": cand.macro_f1, "champion_macro_f1": champ.macro_f1,
    }  # fmt: skip
    return Check("golden_micro_f1", "pass" if ok else "fail", detail, figures)


def slice_drop_limit(champion_f1: float, support: int, cfg: TrainerSettings) -> float:
    """How far a tag's golden F1 may fall: the tolerance, or ``z`` standard errors if that is more.

    On a few dozen examples one listing moves F1 by several points; a drop within ``z``
    binomial standard errors of the champion's F1 (``sqrt(f(1-f)/support)``) is not evidence.

    >>> from shared.settings import TrainerSettings
    >>> round(slice_drop_limit(0.24, 22, TrainerSettings()), 3), round(slice_drop_limit(0.5, 400, TrainerSettings()), 3)
    (0.182, 0.05)
    """
    f1 = min(max(champion_f1, 0.0), 1.0)
    return max(cfg.gate_slice_f1_tolerance, cfg.gate_slice_z * math.sqrt(f1 * (1.0 - f1) / max(support, 1)))


def _slices(cand: GoldenMetrics, champ: GoldenMetrics, cfg: TrainerSettings) -> Check:
    compared = 0
    offenders: list[tuple[float, str, float, float, int]] = []  # (drop, tag, champion F1, candidate F1, support)
    for tag, old in champ.per_tag.items():
        new = cand.per_tag.get(tag)
        support = min(old.support, new.support) if new is not None else old.support
        if support < cfg.gate_slice_min_support:
            continue
        compared += 1
        new_f1 = new.f1 if new is not None else 0.0
        drop = old.f1 - new_f1
        if not drop <= slice_drop_limit(old.f1, support, cfg):  # NaN counts as a drop
            offenders.append((drop, tag, old.f1, new_f1, support))
    offenders.sort(key=lambda o: (-o[0], o[1]))
    figures = {
        "compared": compared, "min_support": cfg.gate_slice_min_support, "tolerance": cfg.gate_slice_f1_tolerance,
        "z": cfg.gate_slice_z,
        "offenders": [{"tag": t, "champion_f1": a, "candidate_f1": b, "drop": d, "support": n}
                      for d, t, a, b, n in offenders],
    }  # fmt: skip
    if not offenders:
        detail = (
            f"no drop over {cfg.gate_slice_f1_tolerance:g} F1 (and {cfg.gate_slice_z:g} standard errors) among "
            f"{compared} tags with support ≥ {cfg.gate_slice_min_support}"
        )
        return Check("slices", "pass", detail, figures)
    named = ", ".join(f"{t} {a:.3f}→{b:.3f} (n={n})" for _, t, a, b, n in offenders[:MAX_OFFENDERS_NAMED])
    more = f" and {len(offenders) - MAX_OFFENDERS_NAMED} more" if len(offenders) > MAX_OFFENDERS_NAMED else ""
    detail = (
        f"{len(offenders)} of {compared} tags with support ≥ {cfg.gate_slice_min_support} drop more than "
        f"{cfg.gate_slice_f1_tolerance:g} F1 and {cfg.gate_slice_z:g} standard errors, worst: {named}{more}"
    )
    return Check("slices", "fail", detail, figures)


def _recent(cand: ModelScores, champ: ModelScores, cfg: TrainerSettings) -> Check:
    if cand.recent is None or champ.recent is None:
        return Check("recent", "fail", "no recent-feedback score for both models: improvement not shown")
    examples = min(cand.recent_examples, champ.recent_examples)
    if examples < cfg.gate_recent_min_examples:
        detail = f"recent holdout has {examples} examples < {cfg.gate_recent_min_examples}: improvement not shown"
        return Check("recent", "fail", detail, {"examples": examples, "min_examples": cfg.gate_recent_min_examples})
    delta = cand.recent - champ.recent
    ok = delta > cfg.gate_recent_min_delta
    detail = (
        f"candidate {cand.recent:.4f} vs champion {champ.recent:.4f} on {examples} recent examples "
        f"(Δ {delta:+.4f}, must be > {cfg.gate_recent_min_delta:g})"
    )
    figures = {
        "candidate": cand.recent, "champion": champ.recent, "delta": delta,
        "min_delta": cfg.gate_recent_min_delta, "examples": examples,
    }  # fmt: skip
    return Check("recent", "pass" if ok else "fail", detail, figures)
