"""`tagloop demo`: the whole walking skeleton on embedded defaults, printing tags as they arrive.

dev up (broker, Postgres, Triton) → create topics → start a tagger → stream N real
Flipkart listings → print each TagEvent from listing-tags → stop the tagger → dev down.
"""

from __future__ import annotations

import asyncio
import threading
import time

from confluent_kafka import Consumer
from rich.console import Console
from rich.table import Table

from services.simulator.listings import flipkart_records, listing_from_record, produce_listings
from services.tagger.main import serve
from services.tagger.pipeline import TaggerOptions
from shared.devstack import stack
from shared.devstack.process import StackError
from shared.events import DeadLetter, TagEvent, TagKind, decode
from shared.kafka import consumer_config, create_all_topics
from shared.settings import Settings


def run_demo(limit: int = 200, keep: bool = False, timeout_s: float = 600) -> int:
    """Run the demo; returns a process exit code (0 when every listing got its tags)."""
    console = Console()
    base = Settings()
    console.print("[bold]Starting the local stack[/] (tansu broker, Postgres, Triton)…")
    try:
        info = stack.up(base)
    except StackError as exc:
        console.print(f"[red]could not start the local stack:[/] {exc}")
        return 1
    try:
        settings = info.apply(base)
        console.print(f"broker {info.bootstrap_servers} · postgres ({info.postgres_mode}) · "
                      f"triton {info.triton_http_url} [{', '.join(info.triton_models)}]")
        for topic, state in create_all_topics(settings).items():
            console.print(f"topic {topic}: {state}")
        return _stream_and_show(console, settings, limit, timeout_s)
    finally:
        if not keep:
            stack.down(base.state_dir)
            console.print("local stack stopped")


def headline(event: TagEvent) -> str:
    """The most specific category tag (else the best tag) of an event, for one line of output."""
    if not event.tags:
        return "(no confident tag)"
    categories = [t for t in event.tags if t.kind == TagKind.CATEGORY]
    # Tags are closed under the hierarchy: the deepest category has the most ancestors present,
    # and ancestors' ids are prefixes of their descendants' ids in every vocabulary we produce.
    best = max(categories or event.tags,
               key=lambda t: (sum(t.tag_id.startswith(o.tag_id) for o in categories), t.score))
    return f"{best.name} ({best.score:.2f}, {best.source})"


def _stream_and_show(console: Console, settings: Settings, limit: int, timeout_s: float) -> int:
    records = list(flipkart_records(settings.data_dir, limit))
    titles = {r.id: r.text.split("\n", 1)[0] for r in records}
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    tagger = threading.Thread(
        target=lambda: loop.run_until_complete(serve(settings, TaggerOptions(group_id="tagloop-demo"), stop=stop)),
        name="tagger", daemon=True,
    )
    tagger.start()
    consumer = Consumer(consumer_config(settings.kafka, f"tagloop-demo-reader-{time.time_ns()}"))
    consumer.subscribe([settings.topics.tags, settings.topics.dead_letter])
    console.print(f"streaming {len(records)} real listings…")
    produce_listings(settings, (listing_from_record(r) for r in records))
    table = Table("listing", "tags (score)", "model", title="Tags as they arrived")
    seen: set[str] = set()
    dead = 0
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < len(titles) and time.monotonic() < deadline and tagger.is_alive():
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            if msg.topic() == settings.topics.dead_letter:
                dead += 1
                console.print(f"[yellow]dead letter:[/] {decode(DeadLetter, msg.value()).reason}")
                continue
            event = decode(TagEvent, msg.value())
            if event.listing_id in seen:
                continue
            seen.add(event.listing_id)
            line = headline(event)
            title = titles.get(event.listing_id, event.listing_id)[:60]
            console.print(f"[green]{len(seen):4d}[/] {title:60} → {line}")
            if len(table.rows) < 15:
                table.add_row(titles.get(event.listing_id, "")[:50],
                              "\n".join(f"{t.name} ({t.score:.2f})" for t in event.tags),
                              f"{event.model_name} v{event.model_version}")
    finally:
        consumer.close()
        loop.call_soon_threadsafe(stop.set)
        tagger.join(60)
    console.print(table)
    console.print(f"[bold]{len(seen)}/{len(titles)} listings tagged, {dead} dead letters[/]")
    return 0 if len(seen) == len(titles) else 1
