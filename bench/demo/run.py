"""``tagloop demo``: the whole loop on the local stack, watched live.

Top to bottom: quick model (cached) → local stack (broker, Postgres, Triton) → tagger, feedback
service and learner as processes → real listings stream in and are tagged by the quick model →
simulated shoppers and merchants answer the published tags → the feedback service counts them
into Postgres, the learner learns affinity → the trainer service's volume trigger starts a job
→ gate → canary → promotion → the tagger publishes with the new version → summary.

Ctrl-C (or the end) stops every process this demo started; ``--keep`` leaves them running.
"""

from __future__ import annotations

import multiprocessing
import queue
import secrets
import signal
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from rich.console import Console
from rich.live import Live

from bench.demo.harness import FEEDBACK_GROUP, Shoppers, count_dead_letters, running_services
from bench.demo.quick_model import (
    NEW_LINE_KEEP,
    DemoCatalog,
    QuickModel,
    ensure_quick_model,
    install_as_version_1,
    new_lines_micro_f1,
    split_demo_catalog,
)
from bench.demo.view import DemoStatus, progress_line, render, summary
from services.feedback.loadgen import stored_offsets
from services.simulator.listings import listing_from_record, produce_listings
from services.simulator.shoppers import ShopperConfig
from services.trainer import jobs
from services.trainer.embeddings import EmbeddingCache
from services.trainer.model_ops import ModelOps
from services.trainer.scoring import golden_metrics
from services.trainer.service import TickResult, TrainerData, TrainerService
from shared.catalog.readers import load_records
from shared.devstack import stack
from shared.devstack.process import ManagedProcess, free_port
from shared.events import TagEvent, TagKind
from shared.kafka import create_all_topics
from shared.model_registry import ModelRegistry, ModelStatus
from shared.model_repository import version_dir
from shared.settings import Settings
from shared.triton_admin import TritonAdmin

DEMO_SHOPPERS_PER_TAG = 30  # impressions per shown tag: enough for shopper behaviour to make labels


@dataclass(frozen=True)
class DemoOptions:
    listings: int = 3000  # at most; the demo ends earlier once the promoted version is serving
    rate_per_s: float = 6.0  # new listings per second: traffic keeps coming while a job and a canary run
    duration_s: float = 900.0
    keep: bool = False
    data: Path | None = None
    format: str = "flipkart"
    seed: int = 0


def demo_settings(base: Settings, workdir: Path) -> Settings:
    """Production knobs scaled to minutes of traffic: a job after a few hundred listings' feedback."""
    trainer = base.trainer.model_copy(update={
        # A job after ~2,000 labels (weights ~0.5): a first job on ~450 was promoted within the golden
        # tolerance but no better (0.902 vs 0.903); refits on ~3,000 gained +0.3 (measured offline).
        "tick_interval_s": 2.0, "cooldown_h": 0.0, "volume_weighted_labels": 1000.0, "schedule_interval_h": 10_000.0,
        "schedule_min_weighted_labels": 1e9,  # the volume trigger turns the loop here, not the schedule
        "canary_share": 0.5, "canary_min_impressions": 150, "canary_min_requests": 10,
        # Merchants judge the guess first, and over a quick model that is unsure of its new product
        # lines nearly every listing has one: the arms' shown tags got 0-3 judgements in a few
        # minutes (measured). CTR decides here; acceptance is tested whenever both arms have some.
        "canary_min_judgements": 0,
        # Feedback can only confirm the tags that are shown or explored, and the gate's recent check
        # only sees a candidate's gains on those: guesses from 0.03 up, as in `tagloop eval loop`
        # (bench/results/loop.md). A tenth, not its 0.3: merchants judge the guess first, and with a
        # guess on nearly every listing the canary's arms got too few judgements of their shown tags.
        "exploration_share": 0.1, "exploration_min_score": 0.03,
        # The demo's golden set has 1,500 listings: a tag with 30 examples moves by 0.05 F1 when two of
        # them flip, which is noise, not a regression (measured: most rejections of a cold run were that).
        "gate_slice_min_support": 50,
    })
    learner = base.learner.model_copy(update={
        "http_port": free_port(),
        "api_token": base.learner.api_token if base.learner.api_token.get_secret_value()
        else SecretStr(secrets.token_urlsafe(24)),  # a token of this run: the API is never open
    })
    return base.model_copy(update={
        "state_dir": workdir, "triton_model_repository": workdir / "models", "trainer": trainer, "learner": learner,
        "tagger": base.tagger.model_copy(update={"rollout_refresh_s": 1.0}),
    })


def headline(event: TagEvent) -> str:
    """The most specific category tag (else the best tag) of an event, for one line of output."""
    if not event.tags:
        return "(no confident tag)"
    categories = [t for t in event.tags if t.kind == TagKind.CATEGORY]
    # Tags are closed under the hierarchy: the deepest category has the most ancestors present.
    best = max(categories or event.tags,
               key=lambda t: (sum(t.tag_id.startswith(o.tag_id) for o in categories), t.score))
    return f"{best.name} ({best.score:.2f})"


def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; returns the exit code (0: every listing tagged, no service failed; 130: Ctrl-C)."""
    console = console or Console()
    base = Settings()
    workdir = (base.state_dir / "demo").resolve()
    records = load_records(options.data or base.data_dir, options.format)  # type: ignore[arg-type]
    catalog = split_demo_catalog(records, seed=options.seed)
    console.print(f"[bold]catalog[/]: {len(records)} labelled listings → {len(catalog.original)} to train the "
                  f"quick model, {len(catalog.reserve)} to stream as new, {len(catalog.golden)} golden holdout")
    if catalog.new_lines:
        console.print(f"[bold]new product lines[/] (the quick model saw {NEW_LINE_KEEP:.0%} of their listings): "
                      f"{len(catalog.new_lines)} departments, {len(catalog.golden_new)} of the golden listings, "
                      f"e.g. {', '.join(catalog.new_lines[:3])}")
    with console.status("training the quick model (pretrained MiniLM + the served head; first run only)…"):
        quick = ensure_quick_model(records, catalog, workdir, base.data_dir / "shopify-taxonomy",
                                   base.triton.tag_model)
    how = "cached" if quick.cached else f"trained in {quick.metrics['fit_seconds']:.0f} s"
    on_new = quick.metrics.get("new_lines_micro_f1")
    console.print(f"[bold]quick model[/]: micro-F1 {quick.metrics['micro_f1']:.3f}, macro-F1 "
                  f"{quick.metrics['macro_f1']:.3f} on the golden holdout"
                  + (f", {on_new:.3f} on its new product lines" if on_new is not None else "") + f" ({how})")
    settings = demo_settings(base, workdir)
    install_as_version_1(quick, settings.triton_model_repository, settings.triton.tag_model)
    database = f"tagloop_demo_{uuid.uuid4().hex[:8]}"
    loop: DemoLoop | None = None
    code = 1
    interrupted = _InterruptFlag()
    try:
        with console.status("starting the local stack (broker, Postgres, Triton)…"):
            settings = stack.up(settings, database=database, triton_models=[settings.triton.tag_model]).apply(settings)
        loop = DemoLoop(settings, catalog, quick, options, console)
        code = loop.run()
    except (KeyboardInterrupt, Exception) as exc:
        # Ctrl-C inside a C extension's call (the Kafka producer's flush) can surface as another
        # error, e.g. SystemError; after a Ctrl-C any error is the interruption, not a failure.
        if not (isinstance(exc, KeyboardInterrupt) or interrupted.seen):
            raise
        console.print("[yellow]interrupted: stopping every process the demo started[/]")
        code = 130
    finally:
        interrupted.restore()
        if loop is not None:
            loop.stop(keep=options.keep and code != 130)
        if options.keep and code != 130:
            _print_keep(console, settings, workdir)
        else:
            stack.down(workdir)
            stack.drop_run_database(settings.database_url, database)
            console.print("local stack and services stopped")
    return code


DRAIN_S = 60.0  # after --duration: how long listings already produced may take to be tagged


class _InterruptFlag:
    """Remembers a Ctrl-C (SIGINT) while the demo runs; Python's KeyboardInterrupt still follows."""

    def __init__(self) -> None:
        self.seen = False
        self._previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: object) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self._previous)


class DemoLoop:
    """The running services, the shoppers, the trainer process and the live view."""

    def __init__(self, settings: Settings, catalog: DemoCatalog, quick: QuickModel, options: DemoOptions,
                 console: Console) -> None:
        self.settings, self.catalog, self.options, self.console = settings, catalog, options, console
        self.status = DemoStatus(time.monotonic(), min(options.listings, len(catalog.reserve)))
        self.status.quick_f1 = (quick.metrics["micro_f1"], quick.metrics["macro_f1"])
        self.status.quick_new_lines_f1 = quick.metrics.get("new_lines_micro_f1")
        self.exits = ExitStack()
        self.trainer: multiprocessing.process.BaseProcess | None = None
        self.trainer_notes: Any = None
        self._last_printed: tuple[str, int | None] | None = None  # the trainer's last line above the view
        self.shoppers: Shoppers | None = None
        self.titles = {r.id: r.text.split("\n", 1)[0] for r in catalog.reserve}
        self.registry: ModelRegistry | None = None
        self.job_running = self.canary_running = self.failed = False
        self.procs: dict[str, ManagedProcess] = {}

    def run(self) -> int:
        from services.db_cli import migrate_all

        create_all_topics(self.settings)
        migrate_all(self.settings)  # every schema; registers the quick model (version 1) as champion
        self.registry = ModelRegistry(self.settings)
        data = TrainerData(self.catalog.original, self.catalog.golden, self.catalog.texts)
        self.procs = self.exits.enter_context(running_services(self.settings, self.settings.state_dir))
        self.shoppers = Shoppers(self.settings, self.catalog.truth, self.options.seed,
                                 ShopperConfig(shoppers_per_tag=DEMO_SHOPPERS_PER_TAG))
        self.exits.callback(self.shoppers.close)
        # The trainer service in its own process, as `tagloop trainer run` runs: a job in progress
        # is killed with it on Ctrl-C (no native threads left running at exit).
        spawn = multiprocessing.get_context("spawn")
        self.trainer_notes = spawn.Queue()
        self.trainer = spawn.Process(target=trainer_process, name="demo-trainer",
                                     args=(self.settings, data, self.trainer_notes))
        self.trainer.start()
        self.console.print("services running: tagger, feedback, learner (API), trainer; streaming listings…")
        with Live(render(self.status, time.monotonic()), console=self.console, refresh_per_second=2,
                  transient=False) as live:
            self._stream(live)
        self.status.phase = "summary"
        self._finish()
        self.console.print(summary(self.status, time.monotonic()))
        s = self.status
        if self.failed:
            self.console.print(f"[red]{s.phase}[/]")
        elif s.promoted_version is not None:
            self.console.print(f"[bold green]the loop turned: v{s.promoted_version} was trained on feedback, "
                               "passed the gate and its canary, and now tags the new listings[/]")
        else:  # the gate and the canary did their job: nothing better was found in this run
            self.console.print("[bold yellow]no candidate passed the gate and its canary in this run (reasons "
                               "above); the quick model kept serving[/]")
        return 0 if not self.failed and s.listings_tagged == s.listings_produced else 1

    # -- the loop ------------------------------------------------------------------------

    def _stream(self, live: Live) -> None:
        """Produce listings while the tagger keeps up; react; refresh the view; stop when the loop turned."""
        assert self.shoppers is not None
        stream = self.catalog.reserve[: self.status.listings_target]
        deadline = self.status.started + self.options.duration_s
        cursor, last_poll, last_line, after_promotion = 0, 0.0, 0.0, 0
        self.status.phase = "streaming listings"
        while True:
            now = time.monotonic()
            # Past the duration nothing new is produced, and what was produced is waited for
            # (up to DRAIN_S), so that a run cut by --duration still accounts for every listing.
            if now >= deadline and (self.status.lag == 0 or now >= deadline + DRAIN_S):
                break
            due = int((now - self.status.started) * self.options.rate_per_s)
            if now < deadline and cursor < min(due, len(stream)) and self.status.lag < 64:  # never bury the tagger
                chunk = stream[cursor:min(due, cursor + 32)]
                produce_listings(self.settings, [listing_from_record(r) for r in chunk])
                cursor += len(chunk)
                self.status.listings_produced = cursor
            self._react()
            self._trainer_notes()
            if time.monotonic() - last_poll > 2.0:
                self._poll_services()
                last_poll = time.monotonic()
                dead = [f"{name} ({p.log_file})" for name, p in self.procs.items() if not p.running()]
                if dead:  # a service that died is an error to show, not a stall to wait out
                    self.status.phase = f"stopped: {', '.join(dead)} exited; see the log"
                    self.failed = True
                    break
            live.update(render(self.status, time.monotonic()))
            if not self.console.is_terminal and time.monotonic() - last_line > 15:  # a log, not a screen
                self.console.print(progress_line(self.status, time.monotonic()))
                last_line = time.monotonic()
            promoted = self.status.promoted_version
            if promoted is not None:
                after_promotion = self.status.versions.get(f"{self.settings.triton.tag_model} v{promoted}", 0)
                self.status.phase = f"v{promoted} promoted: tagging with it"
            # Done: the promoted version is serving (later jobs would only repeat the turn), or no
            # listings are left and nothing is pending.
            if self.status.lag == 0 and (after_promotion >= 30 or (cursor >= len(stream) and self._trainer_quiet())):
                break

    def _react(self) -> None:
        assert self.shoppers is not None
        before = len(self.shoppers.tagged)
        self.shoppers.react(timeout_s=0.3)
        s = self.status
        s.listings_tagged = len(self.shoppers.tagged)
        s.versions = Counter(self.shoppers.events_by_version)
        s.feedback_sent = self.shoppers.feedback_sent
        s.tags_published = self.shoppers.tags_seen
        if len(self.shoppers.tagged) > before:
            for event in self.shoppers.last_events[-2:]:
                s.recent = [*s.recent[-4:], (self.titles.get(event.listing_id, event.listing_id),
                                             f"{headline(event)} · v{event.model_version}")]

    def _poll_services(self) -> None:
        """Counted feedback (Postgres offsets), learner counters and affinity, the trainer's job row."""
        s, settings = self.status, self.settings
        assert self.shoppers is not None
        stored = stored_offsets(settings.database_url, FEEDBACK_GROUP)
        # Stored offsets are the next record to read, per partition of `feedback` (from 0).
        s.feedback_counted = sum(o for (topic, _), o in stored.items() if topic == settings.topics.feedback)
        learner = f"http://{settings.learner.http_host}:{settings.learner.http_port}"
        headers = {"Authorization": f"Bearer {settings.learner.api_token.get_secret_value()}"}
        try:
            stats = httpx.get(f"{learner}/v1/stats", headers=headers, timeout=1.0).json()
            s.learner_events = int(stats.get("events_seen", 0))
            for user, _ in self.shoppers.users.most_common(3):
                top = httpx.get(f"{learner}/v1/users/{user}/tags", params={"k": 3}, headers=headers, timeout=1.0)
                if top.status_code == 200:
                    names = self.shoppers.tag_names
                    s.affinity[user] = [(names.get(t["tag_id"], t["tag_id"]), t["score"])
                                        for t in top.json()["tags"]]
        except (httpx.HTTPError, KeyError, ValueError):
            pass  # the learner is still starting: shown as 0 learned
        latest = jobs.list_jobs(settings, limit=1)
        self.job_running = bool(latest) and latest[0].status == "running"
        assert self.registry is not None
        canary = self.registry.list_versions(settings.triton.tag_model, [ModelStatus.CANARY])
        self.canary_running = bool(canary)
        if canary:
            s.trainer_state = f"canary v{canary[-1].version} serves {settings.trainer.canary_share:.0%} of listings"
        elif latest:
            job = latest[0]
            s.trainer_state = (f"job {job.id} ({job.kind}, trigger: {job.trigger_kind}) {job.status}"
                               + (f" → candidate v{job.candidate_version}" if job.candidate_version else ""))

    def _trainer_notes(self) -> None:
        """What the trainer process said since the last look: into the view, and a line above it."""
        while True:
            try:
                action, candidate, detail = self.trainer_notes.get_nowait()
            except queue.Empty:
                return
            if self.status.trainer_log and self.status.trainer_log[-1] == detail:
                continue  # a canary still waiting for the same sample: said already
            self.status.note(detail)
            if action == "canary-wait" and self._last_printed == (action, candidate):
                continue  # the view shows how far its sample is; one line above it says that it waits
            self._last_printed = (action, candidate)
            self.console.print(f"[{time.monotonic() - self.status.started:4.0f}s] trainer: {detail}")
            if action == "promoted":
                self.status.promoted_version = candidate

    def _trainer_quiet(self) -> bool:
        """No job or canary in progress (the loop has nothing pending)."""
        return not (self.job_running or self.canary_running)

    def _finish(self) -> None:
        s = self.status
        s.dead_letters = count_dead_letters(self.settings)
        self._poll_services()
        if s.promoted_version is not None:
            model = self.settings.triton.tag_model
            vdir = version_dir(self.settings.triton_model_repository, model, s.promoted_version)
            cache = EmbeddingCache(self.settings.state_dir / "embeddings")
            m = golden_metrics(vdir, self.catalog.golden, cache)
            s.promoted_f1 = (round(m.micro_f1, 4), round(m.macro_f1, 4))
            s.promoted_new_lines_f1 = new_lines_micro_f1(vdir, self.catalog, cache)

    def stop(self, keep: bool = False) -> None:
        """Stop the trainer process; stop the services too unless they are to be kept running."""
        if self.trainer is not None and self.trainer.is_alive():
            self.trainer.terminate()
            self.trainer.join(30)
        if keep:
            if self.shoppers is not None:
                self.shoppers.close()
            return
        self.exits.close()


def _print_keep(console: Console, settings: Settings, workdir: Path) -> None:
    token_file = workdir / "api-token"
    token_file.write_text(settings.learner.api_token.get_secret_value())
    token_file.chmod(0o600)
    console.print(
        "[bold]still running[/] (--keep):\n"
        f"  broker     {settings.kafka.bootstrap_servers}\n"
        f"  triton     http://{settings.triton.http_url}\n"
        f"  learner    http://{settings.learner.http_host}:{settings.learner.http_port}/docs "
        f"(bearer token in {token_file})\n"
        f"  logs       {workdir}/*.log\n"
        f"stop everything with: TAGLOOP_STATE_DIR={workdir} tagloop dev down"
    )


def trainer_process(settings: Settings, data: TrainerData, notes: Any) -> None:
    """The trainer service's tick loop (what ``tagloop trainer run`` does), reporting each action."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the demo, which stops this process
    with TritonAdmin(settings.triton.http_url) as admin:
        registry = ModelRegistry(settings)
        drain = 3 * settings.tagger.rollout_refresh_s  # taggers move off a version before it is unloaded
        trainer = TrainerService(settings, data, ModelOps(registry, admin, settings.triton.tag_model, drain_s=drain))
        while True:
            time.sleep(settings.trainer.tick_interval_s)
            try:
                result = trainer.tick()
            except Exception as exc:  # a failed job leaves serving untouched: say so and go on
                notes.put(("failed", None, f"tick failed: {type(exc).__name__}: {exc}"))
                continue
            if result.action != "idle":
                notes.put((result.action, result.candidate, describe(result)))


def describe(result: TickResult) -> str:
    """One line for the view: what a trainer tick did."""
    if result.action == "job":
        blessed = result.decision is not None and result.decision.blessed
        reasons = result.decision.reasons if result.decision else []
        failed = [r for r in reasons if not r.startswith("PASS")]  # why not, when it was not
        return f"gate {'blessed' if blessed else 'rejected'} v{result.candidate}: {'; '.join((failed or reasons)[:2])}"
    verdict = result.verdict.reasons if result.verdict else []
    why = [r for r in verdict if r.startswith(("WAIT", "FAIL"))][:1]  # what it waits for, or why it failed
    return {"canary-wait": f"canary v{result.candidate}: waiting for enough feedback",
            "promoted": f"canary v{result.candidate} promoted to champion",
            "rolled-back": f"canary v{result.candidate} rolled back"}.get(result.action, result.action) + \
        "".join(f" ({r})" for r in why)
