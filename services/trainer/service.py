"""The trainer service: feedback becomes labels, a trigger starts a job, the gate and a canary decide.

:meth:`TrainerService.tick` reads top to bottom, once per ``TAGLOOP_TRAINER__TICK_INTERVAL_S``:

1. a canary in progress is judged first (:func:`shared.canary.canary_verdict` on what each
   version's listings got from shoppers and merchants, and what taggers saw of its requests):
   promote, roll back, or wait;
2. otherwise the triggers are evaluated (:mod:`services.trainer.triggers`); a fired trigger
   starts a **job**, never a deployment: labels from the feedback service's
   ``feedback_tag_labels`` → the fast job (head refit on the champion's encoder) → a candidate
   version → scores of candidate and champion on the golden and the recent-feedback holdouts →
   the gate (:mod:`services.trainer.gate`) → a blessed candidate is loaded next to the champion
   in Triton and becomes the **canary**; a rejected one is marked ``rejected``.

One job at a time across all trainer processes (a Postgres advisory lock, :mod:`jobs`); a job
that dies leaves serving untouched and is marked failed on the next start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from services.trainer import jobs
from services.trainer.deep_job import DeepOptions, run_deep_job
from services.trainer.embeddings import EmbeddingCache, embed_texts, served_encoder
from services.trainer.fast_job import base_version_dir, run_fast_job
from services.trainer.feedback_labels import Label
from services.trainer.gate import Decision, decide
from services.trainer.job_input import FastJobInput, JobRecord
from services.trainer.label_source import build_training_labels
from services.trainer.model_ops import ModelOps
from services.trainer.scoring import exploration_weights, is_recent_holdout, score
from services.trainer.triggers import Trigger, TriggerSnapshot, WindowStats, evaluate_triggers
from shared.canary import ArmStats, CanaryVerdict, ListingSums, canary_verdict
from shared.events import utc_now
from shared.model_registry import ModelRegistry, ModelStatus
from shared.model_repository import version_dir, versions
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerData:
    """What a model line learns from and is judged on, besides feedback.

    ``original``: the labelled catalog records the line trains on (with their full tag sets);
    ``golden``: labelled records never trained on, the fixed holdout of the gate;
    ``texts``: listing id → text for every listing feedback may speak of.
    """

    original: list[JobRecord]
    golden: list[JobRecord]
    texts: dict[str, str]


@dataclass
class TickResult:
    """What one tick did, for logs, the CLI and the loop experiment."""

    action: str  # idle | job | canary-wait | promoted | rolled-back
    triggers: list[Trigger] = field(default_factory=list)
    job: jobs.JobRecord | None = None
    decision: Decision | None = None
    verdict: CanaryVerdict | None = None
    candidate: int | None = None


def arm_feedback(conn: psycopg.Connection[Any], since: datetime, until: datetime | None = None) -> dict[str, ArmStats]:
    """Per model version: impressions, clicks, accepts, rejects and listings of the tags it chose
    to show, with the per-listing sums of squares the canary's clustered tests need.

    Exploratory tags are left out: they are the exploration policy's guesses (mostly wrong, so
    rarely clicked), and how many an arm gets depends on how many of its candidates fall under
    their thresholds, not on how good its shown tags are. ``listings`` counts the listings whose
    shown tags got any feedback.
    """
    rows = conn.execute(
        "WITH per_listing AS (SELECT model_version AS v, listing_id, sum(impressions)::float8 AS i,"
        " sum(clicks)::float8 AS c, sum(accepts)::float8 AS a, sum(accepts + rejects)::float8 AS j, sum(rejects) AS r"
        " FROM feedback_tag_labels(%s, %s) WHERE NOT coalesce(exploratory, false) GROUP BY 1, 2)"
        " SELECT v, sum(i), sum(c), sum(a), sum(r), count(*), sum(c * c), sum(i * i), sum(c * i),"
        " sum(a * a), sum(j * j), sum(a * j) FROM per_listing GROUP BY v", (since, until)).fetchall()  # fmt: skip
    return {
        str(v): ArmStats(impressions=int(i), clicks=int(c), accepts=int(a), rejects=int(r), listings=int(n),
                         ctr_sums=ListingSums(x_sq=cc, n_sq=ii, x_n=ci),
                         acceptance_sums=ListingSums(x_sq=aa, n_sq=jj, x_n=aj))
        for v, i, c, a, r, n, cc, ii, ci, aa, jj, aj in rows if v is not None
    }  # fmt: skip


class TrainerService:
    """Parameters: ``ops`` changes status and what Triton serves together (the same code as
    ``tagloop model``); None changes the registry alone (where no Triton serves the model)."""

    def __init__(
        self, settings: Settings, data: TrainerData, ops: ModelOps | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings, self.data = settings, data
        self.ops = ops
        self.clock = clock
        self.model = settings.triton.tag_model
        self.repository = settings.triton_model_repository
        self.registry = ModelRegistry(settings)
        self.cache = EmbeddingCache(settings.state_dir / "embeddings")

    def recover(self) -> list[jobs.JobRecord]:
        """On start: jobs a dead trainer left running are marked failed, and a candidate such a job
        had registered is rejected (never half-deployed: it never served)."""
        interrupted = jobs.recover_interrupted(self.settings)
        for job in interrupted:
            if job.candidate_version is None:
                continue
            version = self.registry.get(self.model, job.candidate_version)
            if version is not None and version.status == ModelStatus.CANDIDATE:
                self.registry.set_status(self.model, version.version, ModelStatus.REJECTED,
                                         reason=f"trainer job {job.id} was interrupted")
        return interrupted

    # -- the tick, top to bottom --------------------------------------------------------

    def tick(self, force: Trigger | None = None) -> TickResult:
        """Judge a running canary, or evaluate the triggers and run a job if one fired."""
        canary = self._canary()
        if canary is not None:
            return self.judge_canary(canary)
        fired = [force] if force is not None else evaluate_triggers(self.snapshot(), self.settings.trainer)
        if not fired:
            return TickResult("idle")
        return self.run_job(fired[0], fired)

    def run_job(self, trigger: Trigger, fired: Sequence[Trigger] = ()) -> TickResult:
        """One job (``TAGLOOP_TRAINER__JOB_KIND``: fast or deep): labels → candidate → gate → canary (or
        rejected). Serving changes only at the end."""
        kind = self.settings.trainer.job_kind
        with jobs.start_job(self.settings, kind, trigger.kind, trigger.reason, dict(trigger.figures),
                            model_name=self.model) as job:
            if job is None:
                log.info("another trainer runs a job; skipping %s", trigger.kind)
                return TickResult("idle", list(fired))
            labels = build_training_labels(self.settings, until=self.clock()).labels
            train, recent = self.split_recent(labels)
            job_input = self.job_input(train)
            jobs.update_job(job, dataset_fingerprint=None, composition=self.composition(train, recent))
            champion_dir = base_version_dir(self.registry, self.repository, self.model)
            if kind == "deep":  # the encoder fine-tuned from the champion's, then the same head refit
                result = run_deep_job(job_input, self.repository, self.model, base_version_dir=champion_dir,
                                      registry=self.registry, cache_dir=self.cache.directory, job_id=str(job.id),
                                      options=DeepOptions.from_settings(self.settings.trainer))
            else:
                result = run_fast_job(job_input, self.repository, self.model, base_version_dir=champion_dir,
                                      registry=self.registry, cache_dir=self.cache.directory, job_id=str(job.id))
            jobs.update_job(job, dataset_fingerprint=result.fingerprint, candidate_version=result.version)
            decision = self.gate(result.version_dir, champion_dir, recent)
            metrics = {f"{kind}_job": result.metrics, "timings": result.timings}
            if not decision.blessed:
                self.registry.set_status(self.model, result.version, ModelStatus.REJECTED,
                                         reason="gate: " + "; ".join(decision.reasons)[:1000])
                record = jobs.finish_job(job, "rejected", candidate_version=result.version, metrics=metrics,
                                         gate_decision=decision.to_dict())
                return TickResult("job", list(fired), record, decision, candidate=result.version)
            self.start_canary(result.version)
            record = jobs.finish_job(job, "succeeded", candidate_version=result.version, metrics=metrics,
                                     gate_decision=decision.to_dict())
            return TickResult("job", list(fired), record, decision, candidate=result.version)

    # -- pieces ---------------------------------------------------------------------------

    def split_recent(self, labels: Sequence[Label]) -> tuple[list[Label], list[Label]]:
        """(training labels, recent-feedback holdout): ``gate_recent_holdout_share`` of listings, by id hash."""
        share = self.settings.trainer.gate_recent_holdout_share
        recent = [x for x in labels if is_recent_holdout(x.listing_id, share)]
        return [x for x in labels if not is_recent_holdout(x.listing_id, share)], recent

    def job_input(self, labels: Sequence[Label]) -> FastJobInput:
        """The original records plus every listing feedback speaks of (its text), with the labels.

        The fast job refits the head from scratch, so all of the original data goes in (a
        replay share only matters to the deep job's incremental fine-tuning).
        """
        known = {r.listing_id for r in self.data.original}
        extra = sorted({x.listing_id for x in labels} - known)
        records = [*self.data.original, *(JobRecord(lid, self.data.texts[lid]) for lid in extra
                                          if lid in self.data.texts)]
        return FastJobInput(records, list(labels))

    def composition(self, train: Sequence[Label], recent: Sequence[Label]) -> dict[str, Any]:
        strong = sum(x.kind == "strong" for x in train)
        return {"original_records": len(self.data.original), "feedback_labels": len(train),
                "strong": strong, "weak": len(train) - strong, "recent_holdout_labels": len(recent),
                "golden_records": len(self.data.golden)}

    def gate(self, candidate_dir: Path, champion_dir: Path | None, recent: Sequence[Label]) -> Decision:
        texts, golden = self.data.texts, self.data.golden
        cfg = self.settings.trainer
        weights = self.explored_weights(champion_dir, recent) if champion_dir else None
        candidate = score(candidate_dir, golden, recent, texts, self.cache, cfg.exploration_share, weights)
        champion = (score(champion_dir, golden, recent, texts, self.cache, cfg.exploration_share, weights)
                    if champion_dir is not None else None)  # fmt: skip
        return decide(candidate, champion, self.settings.trainer)

    def explored_weights(self, champion_dir: Path, recent: Sequence[Label]) -> dict[tuple[str, str], float]:
        """The recent score's weights of explored labels (:func:`exploration_weights`): the version
        that tagged a listing chose what was explored, so its candidates give the label's propensity
        (the champion's where that version is no longer exported or not known)."""
        exported = {str(v) for v in versions(self.repository, self.model)}

        def logged_by(version: str) -> Path | None:
            return version_dir(self.repository, self.model, int(version)) if version in exported else None

        return exploration_weights(champion_dir, recent, self.data.texts, self.settings.trainer, self.cache, logged_by)

    def start_canary(self, version: int) -> None:
        """Serve the candidate next to the champion, then let taggers route the canary share to it."""
        champion = self.registry.champion(self.model)
        share = self.settings.trainer.canary_share
        if self.ops is not None:
            (self.ops.canary(version, share) if champion is not None else self.ops.promote(version))
        else:
            status = ModelStatus.CANARY if champion is not None else ModelStatus.CHAMPION
            self.registry.set_status(self.model, version, status, reason="blessed by the gate",
                                     metrics_update={"canary_share": share})

    def judge_canary(self, canary: int) -> TickResult:
        champion = self.registry.champion(self.model)
        if champion is None:  # nothing to compare with: the canary simply becomes champion
            self.registry.set_status(self.model, canary, ModelStatus.CHAMPION, reason="no champion to compare")
            return TickResult("promoted", candidate=canary)
        since = self._status_since(canary)
        arms = self.arm_stats(since, [champion.version, canary])
        verdict = canary_verdict(arms[champion.version], arms[canary], self.settings.trainer)
        if verdict.action == "promote":
            if self.ops is not None:  # the old champion stays loaded: a rollback is instant
                self.ops.promote(canary)
            else:
                self.registry.set_status(self.model, canary, ModelStatus.CHAMPION, reason="; ".join(verdict.reasons))
            return TickResult("promoted", verdict=verdict, candidate=canary)
        if verdict.action == "rollback":
            # Taggers stop routing to it within their refresh; Triton keeps it loaded until the next
            # change of what serves (in-flight requests must not fail), see ModelOps' drain rule.
            self.registry.set_status(self.model, canary, ModelStatus.ROLLED_BACK, reason="; ".join(verdict.reasons))
            return TickResult("rolled-back", verdict=verdict, candidate=canary)
        return TickResult("canary-wait", verdict=verdict, candidate=canary)

    # -- reading the world ------------------------------------------------------------------

    def snapshot(self) -> TriggerSnapshot:
        cfg, now = self.settings.trainer, self.clock()
        last = jobs.last_job(self.settings)
        since = last.finished_at or last.created_at if last is not None else None
        weighted = sum(x.weight for x in build_training_labels(self.settings, since=since, until=now).labels)
        reference = self.window_stats(now - timedelta(hours=cfg.drift_reference_window_h),
                                      now - timedelta(hours=cfg.drift_recent_window_h))
        recent = self.window_stats(now - timedelta(hours=cfg.drift_recent_window_h), now)
        return TriggerSnapshot(
            now=now, last_job_at=since, last_trigger=last.trigger_kind if last else None,
            weighted_labels_since_last_job=weighted, reference=reference, recent=recent,
            reference_embeddings=self.sampled_embeddings(now - timedelta(hours=cfg.drift_reference_window_h),
                                                         now - timedelta(hours=cfg.drift_recent_window_h)),
            recent_embeddings=self.sampled_embeddings(now - timedelta(hours=cfg.drift_recent_window_h), now),
        )

    def sampled_embeddings(self, since: datetime, until: datetime) -> np.ndarray | None:
        """The champion encoder's embeddings of listings the taggers sampled in a window (drift input);
        None when too few were sampled for a test or no champion is exported."""
        cfg = self.settings.trainer
        with psycopg.connect(self.settings.database_url, connect_timeout=5) as conn:
            exists = conn.execute("SELECT to_regclass('tagger_listing_samples') IS NOT NULL").fetchone()
            if not exists or not exists[0]:
                return None
            rows = conn.execute(
                "SELECT text FROM tagger_listing_samples WHERE sampled_at >= %s AND sampled_at < %s"
                " ORDER BY random() LIMIT %s", (since, until, cfg.mmd_sample_size)).fetchall()
        if len(rows) < cfg.mmd_min_samples:
            return None
        champion = base_version_dir(self.registry, self.repository, self.model)
        if champion is None:
            return None
        return embed_texts(served_encoder(champion), [r[0] for r in rows], self.cache)

    def window_stats(self, since: datetime, until: datetime) -> WindowStats:
        with psycopg.connect(self.settings.database_url, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(impressions), 0), coalesce(sum(clicks), 0), coalesce(sum(accepts), 0),"
                " coalesce(sum(rejects), 0) FROM feedback_tag_labels(%s, %s)", (since, until)).fetchone()
        assert row is not None
        return WindowStats(*(int(v) for v in row))

    def arm_stats(self, since: datetime, versions: Sequence[int]) -> dict[int, ArmStats]:
        """Per version: what its listings got from shoppers and merchants since ``since``, and what
        taggers saw of its requests (``tagger_arm_stats``)."""
        out = {v: ArmStats() for v in versions}
        with psycopg.connect(self.settings.database_url, connect_timeout=5) as conn:
            rows = arm_feedback(conn, since)
            served = conn.execute(
                "SELECT version, sum(requests), sum(errors), max(p99_seconds) FROM tagger_arm_stats"
                " WHERE model_name = %s AND updated_at >= %s GROUP BY version", (self.model, since)).fetchall()
        by_version = {str(v): v for v in versions}
        for version, feedback in rows.items():
            if version in by_version:
                out[by_version[version]] = feedback
        for version, requests, errors, p99 in served:
            if version in by_version:
                v = by_version[version]
                out[v] = replace(out[v], requests=int(requests), errors=int(errors),
                                 latency_p99_ms=float(p99) * 1000 if p99 is not None else None)
        return out

    def _canary(self) -> int | None:
        rows = self.registry.list_versions(self.model, [ModelStatus.CANARY])
        return rows[-1].version if rows else None

    def _status_since(self, version: int) -> datetime:
        changes = [c for c in self.registry.history(self.model, version) if c.to_status == ModelStatus.CANARY]
        return changes[-1].changed_at if changes else self.clock()

