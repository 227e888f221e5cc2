"""Small, real tag model versions and a real Triton serving them, for the fast-job and model-ops tests.

Nothing is mocked: version 1 is ``tagloop train --quick`` over ~300 real Flipkart listings
(pretrained MiniLM, exported to ONNX), further versions come from the fast job or from
:func:`copy_version` (the same head and encoder under another number or model name, through
the one export path). :func:`tag_model_triton` starts the bundled tritonserver over a
repository with exactly the given versions loaded; :class:`Hammer` keeps requests in flight.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.trainer.export import ReusedEncoder, VersionSpec, write_version
from services.trainer.fast_job import quick_train
from services.trainer.train import TrainConfig
from shared.devstack.triton import TritonEndpoints, start_triton, stop_triton, tritonserver_available
from shared.model_repository import CONFIG_FILE, render_tag_model_config
from shared.tagmodel.card import load_model_card
from shared.tagmodel.head import TagHead
from shared.triton_client import TritonTextClient

TEXTS = ["red cotton shirt for men", "steel water bottle 1 litre", "brown leather wallet", "kids sports shoes"]


def tiny_config(data_dir: Path) -> TrainConfig:
    """~300 real listings, short texts: a version in seconds."""
    return TrainConfig(data=data_dir, taxonomy=data_dir / "shopify-taxonomy", limit=300, max_length=32,
                       min_count=3, min_attribute_count=3)  # fmt: skip


def unique_model_name() -> str:
    # The session database and Triton are shared by many tests: each module serves its own model.
    return f"tag_model_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def quick_v1(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1 of ``tag_model`` by ``tagloop train --quick`` over ~300 Flipkart listings."""
    repo = tmp_path_factory.mktemp("quick-repo")
    cache = tmp_path_factory.mktemp("embedding-cache")
    result = quick_train(tiny_config(data_dir), repo, "tag_model", cache_dir=cache)
    return Path(result["exported"])


def copy_version(source: Path, repository: Path, model_name: str) -> Path:
    """The next version of ``model_name`` in ``repository``, with ``source``'s head, calibration and encoder."""
    card = load_model_card(source)
    spec = VersionSpec(
        vocab=card.vocabulary, head=TagHead.load(source), metrics=card.metrics, max_length=card.max_length,
        calibration={"temperature": card.temperature, "thresholds": card.thresholds,
                     "fingerprint": card.data_fingerprint, "zero_shot_threshold": card.zero_shot_threshold,
                     "zero_shot_scale": card.zero_shot_scale},
        embedding_dim=card.embedding_dim, seed=card.seed, base_encoder=card.base_encoder,
    )  # fmt: skip
    return write_version(repository, model_name, spec, ReusedEncoder(source))


@contextmanager
def tag_model_triton(state_dir: Path, repository: Path, model_name: str, versions: Sequence[int]) -> Iterator[
    TritonEndpoints
]:
    """The bundled tritonserver over ``repository`` with ``versions`` of ``model_name`` loaded."""
    reason = tritonserver_available()
    if reason is not None:
        pytest.skip(f"bundled tritonserver unavailable: {reason}")
    # The repository's config pins the versions: later exports are not picked up by themselves.
    (repository / model_name / CONFIG_FILE).write_text(render_tag_model_config(model_name, versions))
    name = f"triton-{model_name}"
    endpoints = start_triton(state_dir, repository, [model_name], name=name)
    try:
        yield endpoints
    finally:
        stop_triton(state_dir, name=name)


@dataclass
class Hammer:
    """``threads`` clients sending requests for one version of a model, back to back, until stopped."""

    url: str
    model_name: str
    version: int
    threads: int = 3
    ok: int = 0
    failed: int = 0
    errors: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]

    def _run(self) -> None:
        client = TritonTextClient(self.url, self.model_name, timeout_s=120, model_version=str(self.version))
        try:
            while not self._stop.is_set():
                try:
                    client.infer(TEXTS)
                    ok, error = True, ""
                except Exception as exc:  # every failure is counted, none is hidden
                    ok, error = False, str(exc)[:200]
                with self._lock:
                    self.ok += ok
                    self.failed += not ok
                    if error:
                        self.errors.add(error)
        finally:
            client.close()

    def __enter__(self) -> Hammer:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(150)

    def wait_for(self, n_ok: int, timeout_s: float = 60.0) -> None:
        """Block until ``n_ok`` requests succeeded (a load then surely meets requests in flight)."""
        deadline = time.monotonic() + timeout_s
        while self.ok < n_ok and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.ok >= n_ok, f"only {self.ok} requests succeeded in {timeout_s:.0f}s: {sorted(self.errors)[:3]}"
