"""Triton's Python-backend stub killed (SIGKILL) while the tagger is tagging real listings.

What tritonserver 2.51 does (measured here, on a Triton of this test alone, so the
session's is not disturbed): it does **not** restart the stub. Every request to the model
then fails with INTERNAL "Stub process 'minilm_encoder_0_0' is not healthy." (after ~1 s),
while ``/v2/health/ready`` and the model's ready endpoint go on answering *ready*. Only
unloading and loading the model again (or restarting Triton) starts a new stub.

So the tagger must treat the failure as retryable (never as a bad listing), and its
readiness gate must not believe Triton's ready endpoints: the client's ``ready()`` runs
a probe inference once a request has failed. The test plays the operator's part by
reloading the model; afterwards every listing has exactly its tag event, nothing was
dead-lettered and the tagger process never restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from services.simulator.listings import produce_listings
from shared.devstack.triton import load_model, model_ready, tritonserver_available, unload_model
from shared.settings import Settings
from shared.triton_client import AsyncTritonTextClient, is_retryable
from tests.integration.test_tagger_faults import (
    ENCODER,
    OwnTriton,
    TaggerProcess,
    TopicTail,
    assert_repeats_identical,
    end_offsets,
    real_listings,
    tag_events,
    wait_committed,
    wait_for,
)
from tests.support import with_triton

pytestmark = pytest.mark.integration


def stub_pids(triton_pid: int, model: str) -> list[int]:
    """Pids of the Python-backend stubs of ``model`` that are children of ``triton_pid``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        stub = ppid == triton_pid and argv[0].endswith(b"triton_python_backend_stub")
        if stub and any(a.startswith(f"{model}_".encode()) for a in argv):
            pids.append(int(proc.name))
    return pids


def failed_requests(http_url: str, model: str) -> int:
    """Triton's count of failed inference requests of ``model`` (reset when it is reloaded)."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=5) as resp:
        stats = json.loads(resp.read())
    return int(sum(s["inference_stats"]["fail"]["count"] for s in stats["model_stats"]))


async def client_view(grpc_url: str) -> tuple[BaseException | None, bool]:
    """What a fresh client sees now: the error of one inference (None if it worked), then ``ready()``."""
    client = AsyncTritonTextClient(grpc_url, ENCODER, timeout_s=30)
    try:
        try:
            await client.infer(["red cotton kurta"])
            error: BaseException | None = None
        except InferenceServerException as exc:
            error = exc
        return error, await client.ready()
    finally:
        await client.close()


@pytest.mark.slow
def test_stub_killed_mid_batch_tagger_retries_loses_nothing(settings: Settings, data_dir: Path, tmp_path: Path) -> None:
    reason = tritonserver_available()
    if reason is not None:
        pytest.skip(f"bundled tritonserver unavailable: {reason}")
    triton = OwnTriton(tmp_path, name="triton-stub-kill")
    triton.start()
    s = with_triton(settings, triton.endpoints)
    http_url, grpc_url = triton.endpoints.http_url, triton.endpoints.grpc_url
    listings = real_listings(data_dir, 200, offset=2500)
    produce_listings(s, listings)  # a backlog: batches are always in flight while it is worked off
    group = f"tagger-stub-{uuid.uuid4().hex[:6]}"
    tagger = TaggerProcess("tagger-stub", s, tmp_path, group, batch_size=16)
    tail, dead = TopicTail(s, s.topics.tags), TopicTail(s, s.topics.dead_letter)
    try:
        tagger.start()
        tagger.wait_ready(120)
        pid = tagger.pid()
        tail.wait(lambda ms: len(ms) >= 32, 300, "tags flowing before the kill")
        triton_pid = triton.proc.pid()
        assert triton_pid is not None
        stubs = stub_pids(triton_pid, ENCODER)
        assert len(stubs) == 1, stubs
        os.kill(stubs[0], signal.SIGKILL)
        killed_at = time.monotonic()
        tagged_at_kill = len(tail.poll(0.2))
        assert tagged_at_kill < len(listings), "the kill did not land mid-stream"

        wait_for(lambda: not tagger.ready(), 60, "the tagger to report not ready (circuit open)")
        not_ready_s = time.monotonic() - killed_at
        # What Triton 2.51 does: no new stub, requests fail INTERNAL, its ready endpoints say ready.
        error, client_ready = asyncio.run(client_view(grpc_url))
        assert isinstance(error, InferenceServerException) and "is not healthy" in str(error), error
        assert str(error.status()) == "StatusCode.INTERNAL" and is_retryable(error)
        assert model_ready(http_url, ENCODER), "Triton now reports the model not ready: update the notes above"
        assert not client_ready, "the client's ready() believed Triton's ready endpoints"
        time.sleep(max(0.0, 10 - (time.monotonic() - killed_at)))  # a 10 s outage, under load
        assert stub_pids(triton_pid, ENCODER) == [], "Triton restarted the stub: update the notes above"
        assert failed_requests(http_url, ENCODER) >= 1  # the tagger's in-flight batches failed
        tagged_while_down = len(tail.poll(0.5)) - tagged_at_kill
        assert dead.poll(0.5) == [], "listings were dead-lettered while the stub was dead"

        # The operator's remedy (Triton does not heal itself): reload the model, a new stub.
        unload_model(http_url, ENCODER)
        load_model(http_url, ENCODER)
        reloaded_at = time.monotonic()
        assert len(stub_pids(triton_pid, ENCODER)) == 1
        ids = {lst.listing_id for lst in listings}
        tail.wait(lambda ms: {e.listing_id for e in tag_events(ms)} >= ids, 420, "a tag for every listing")
        wait_committed(s, group, end_offsets(s, s.topics.listings, s.topics.partitions), 60)
        recovered_s = time.monotonic() - reloaded_at
        events = tag_events(tail.settle(2.0))
        letters = dead.settle(1.0)
        metrics = tagger.metrics()
        assert tagger.running() and tagger.pid() == pid, "the tagger restarted"
        log_text = tagger.log_tail(1_000_000)
    finally:
        tagger.stop()
        tail.close()
        dead.close()
        triton.stop()

    assert "retryable inference failure" in log_text and "is not healthy" in log_text
    assert letters == [] and metrics.get("tagloop_tagger_events_dead_lettered_total", 0) == 0
    assert metrics.get("tagloop_tagger_circuit_open") == 0.0
    assert {e.listing_id for e in events} == ids
    by_id = {lst.listing_id: lst for lst in listings}
    assert all(e.source_event_id == by_id[e.listing_id].event_id for e in events)
    repeats = assert_repeats_identical(events)
    assert repeats == 0 and len(events) == len(listings)  # no crash, no rebalance: exactly one each
    print(f"stub killed: {len(listings)} listings, {tagged_at_kill} tagged before the kill, {tagged_while_down} "
          f"while the stub was dead, tagger not ready {not_ready_s:.1f}s after the kill, all tagged "
          f"{recovered_s:.1f}s after the reload; 0 dead letters, {repeats} repeats")
