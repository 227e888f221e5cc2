"""A coverage-guided fuzz campaign of the edge decoders (``tests/fuzz/fuzz_decoders.py``), fixed budget.

The campaign runs in its own process (libFuzzer owns it), seeded with valid encoded events
of every consumed type and the known hostile inputs, and a dictionary of JSON tokens and
field names. It passes when libFuzzer ran out of time without a crash.
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.events import (
    FeedbackEvent,
    FeedbackType,
    ListingEvent,
    ListingOp,
    Tag,
    TagEvent,
    TagKind,
    TagSource,
    encode,
)
from tests.unit.test_decode_properties import HOSTILE

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
BUDGET_S = 60
TS = datetime(2026, 1, 1, tzinfo=UTC)
NAMES = ("schema_version", "event_id", "listing_id", "user_id", "op", "title", "description", "attributes", "locale",
         "ts", "tags", "tag_id", "name", "kind", "score", "source", "model_name", "model_version", "source_event_id",
         "content_hash", "type", "quantity", "price", "created", "updated", "deleted", "click", "purchase",
         "category", "attribute", "model", "zero-shot")
TOKENS = [
    b"{", b"}", b"[", b"]", b":", b",", b'"', b"null", b"true", b"false", b"NaN", b"Infinity", b"-Infinity",
    b"1e999999", b"-0", b"\\u0000", b"\\ud800", b"\\udc00", b"\\ud83d\\ude00", b"\xff", b"\xed\xa0\x80",
    b"2026-01-01T00:00:00Z", b"9999-12-31T23:59:59", b"0001-01-01T00:00:00", b"-23:59", b"+23:59",
    *(f'"{name}"'.encode() for name in NAMES),
]


def seeds() -> list[bytes]:
    tag = Tag(tag_id="c-1", name="Shirts", kind=TagKind.CATEGORY, score=0.5, source=TagSource.MODEL, name_zh="衬衫")
    valid = [
        ListingEvent(event_id="e1", listing_id="l1", op=ListingOp.CREATED, title="Red cotton shirt",
                     description="Soft", attributes={"Color": "Red"}, ts=TS),
        ListingEvent(event_id="e2", listing_id="l1", op=ListingOp.DELETED, ts=TS),
        FeedbackEvent(event_id="f1", user_id="u1", listing_id="l1", type=FeedbackType.PURCHASE, tag_id="c-1",
                      quantity=2, price=9.5, ts=TS),
        TagEvent(listing_id="l1", tags=[tag], model_name="tag_model", model_version="3", source_event_id="e1",
                 content_hash="ab", ts=TS),
    ]
    return [encode(ev) for ev in valid] + [raw for raw in HOSTILE if raw]


def _dictionary_line(token: bytes) -> str:
    """One libFuzzer dictionary entry: printable ASCII as it is, everything else as \\xNN."""
    return '"' + "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'\\"' else f"\\x{b:02x}" for b in token) + '"'


def test_decoders_survive_a_fuzz_campaign(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus, crashes = tmp_path / "corpus", tmp_path / "crashes"
    corpus.mkdir()
    crashes.mkdir()
    for i, raw in enumerate(seeds()):
        (corpus / f"seed-{i:03d}").write_bytes(raw)
    dictionary = tmp_path / "json.dict"
    dictionary.write_text("\n".join(_dictionary_line(t) for t in TOKENS) + "\n")

    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.fuzz_decoders", str(corpus),
         f"-max_total_time={BUDGET_S}", "-max_len=32768", "-timeout=30", "-rss_limit_mb=2048",
         f"-dict={dictionary}", f"-artifact_prefix={crashes}/", "-print_final_stats=1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=BUDGET_S + 180,
    )
    log = proc.stdout + proc.stderr
    found = sorted(p.name for p in crashes.iterdir())
    assert proc.returncode == 0 and not found, f"fuzzing found {found} (exit {proc.returncode}):\n{log[-6000:]}"
    executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    assert executed is not None and int(executed.group(1)) > 10_000, log[-3000:]
    done = re.search(r"#\d+\s+DONE\s+cov: \d+ ft: \d+ corp: \S+", log)
    print(f"\n{done.group(0) if done else ''} " + "; ".join(re.findall(r"stat::\w+:\s*\d+", log)))
