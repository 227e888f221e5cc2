"""What the demo shows: one status object, rendered live and as the closing summary (no I/O here).

>>> status = DemoStatus(started=0.0, listings_target=10)
>>> status.listings_produced, status.listings_tagged = 10, 8
>>> status.lag
2
>>> status.rate(status.listings_tagged, now=4.0)
2.0
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table


@dataclass
class DemoStatus:
    started: float
    listings_target: int
    phase: str = "starting"
    listings_produced: int = 0
    listings_tagged: int = 0
    tags_published: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)  # "tag_model v2" → tag events
    feedback_sent: int = 0
    feedback_counted: int = 0  # stored in Postgres by the feedback service
    learner_events: int = 0  # feedback events the learner has seen
    trainer_state: str = "idle"
    trainer_log: list[str] = field(default_factory=list)
    affinity: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    recent: list[tuple[str, str]] = field(default_factory=list)  # (title, headline tag)
    quick_f1: tuple[float, float] | None = None
    promoted_f1: tuple[float, float] | None = None
    quick_new_lines_f1: float | None = None  # golden micro-F1 on the new product lines' listings
    promoted_new_lines_f1: float | None = None
    promoted_version: int | None = None

    @property
    def lag(self) -> int:
        """Listings produced but not tagged yet (the tagger's consumer lag, end to end)."""
        return self.listings_produced - self.listings_tagged

    def rate(self, count: float, now: float) -> float:
        return count / max(now - self.started, 1e-9)

    def note(self, line: str) -> None:
        self.trainer_log = [*self.trainer_log[-5:], line]


def _share(versions: Counter[str]) -> str:
    total = sum(versions.values()) or 1
    return ", ".join(f"{v}: {n / total:.0%}" for v, n in sorted(versions.items())) or "-"


def render(status: DemoStatus, now: float) -> Group:
    """The live view: throughput, lag, dead letters, versions, feedback, learner, trainer, affinity."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    elapsed = now - status.started
    grid.add_row("phase", f"{status.phase}  ({elapsed:.0f} s)")
    grid.add_row("listings", f"{status.listings_tagged}/{status.listings_produced} tagged of "
                             f"{status.listings_target}  ·  {status.rate(status.listings_tagged, now):.1f}/s  ·  "
                             f"lag {status.lag}")
    by_service = ", ".join(f"{k}: {v}" for k, v in status.dead_letters.items())
    grid.add_row("dead letters", f"{sum(status.dead_letters.values())}" + (f"  ({by_service})" if by_service else ""))
    grid.add_row("model versions", _share(status.versions))
    grid.add_row("feedback", f"{status.feedback_sent} sent · {status.feedback_counted} counted in Postgres · "
                             f"{status.rate(status.feedback_sent, now):.0f}/s")
    learner_lag = max(0, status.feedback_sent - status.learner_events)
    grid.add_row("learner", f"{status.learner_events} events learned · lag {learner_lag}")
    grid.add_row("trainer", status.trainer_state)
    for line in status.trainer_log[-3:]:
        grid.add_row("", f"[dim]{line}[/]")
    parts: list[Any] = [Panel(grid, title="tagloop demo: the whole loop", border_style="cyan")]
    if status.recent:
        recent = Table("listing", "tag", title="latest tags", title_justify="left", expand=False)
        for title, tag in status.recent[-5:]:
            recent.add_row(title[:60], tag)
        parts.append(recent)
    if status.affinity:
        parts.append(affinity_table(status.affinity))
    return Group(*parts)


def progress_line(status: DemoStatus, now: float) -> str:
    """The view in one line, for output that is not a terminal (logs, CI)."""
    return (f"[{now - status.started:4.0f}s] {status.phase}: {status.listings_tagged}/{status.listings_produced} "
            f"tagged (lag {status.lag}), feedback {status.feedback_sent} sent/{status.feedback_counted} counted, "
            f"learner {status.learner_events}, versions {_share(status.versions)}, trainer: {status.trainer_state}"
            + (f" | {status.trainer_log[-1]}" if status.trainer_log else ""))


def affinity_table(affinity: dict[str, list[tuple[str, float]]]) -> Table:
    table = Table("user", "top tags (learned affinity)", title="learner: user × tag", title_justify="left")
    for user, tags in list(affinity.items())[:4]:
        table.add_row(user, ", ".join(f"{name} {score:.2f}" for name, score in tags[:3]) or "-")
    return table


def _new_lines(f1: float | None) -> str:
    return "" if f1 is None else f" · new product lines micro-F1 {f1:.3f}"


def summary(status: DemoStatus, now: float) -> Group:
    """The closing summary."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("listings tagged", f"{status.listings_tagged} of {status.listings_produced} produced")
    table.add_row("tags/s", f"{status.rate(status.tags_published, now):.1f} ({status.tags_published} tags)")
    table.add_row("dead letters", str(sum(status.dead_letters.values())))
    table.add_row("feedback events", f"{status.feedback_sent} sent, {status.feedback_counted} counted")
    if status.quick_f1:
        table.add_row("quick model (v1)", f"micro-F1 {status.quick_f1[0]:.3f} · macro-F1 {status.quick_f1[1]:.3f} "
                                          "on the golden holdout" + _new_lines(status.quick_new_lines_f1))
    if status.promoted_f1 and status.promoted_version:
        table.add_row(f"promoted (v{status.promoted_version})",
                      f"micro-F1 {status.promoted_f1[0]:.3f} · macro-F1 {status.promoted_f1[1]:.3f}"
                      + _new_lines(status.promoted_new_lines_f1))
    else:
        table.add_row("promoted", "none in this run")
    table.add_row("versions", _share(status.versions))
    parts: list[Any] = [Panel(table, title="summary", border_style="green")]
    if status.affinity:
        parts.append(affinity_table(status.affinity))
    return Group(*parts)
