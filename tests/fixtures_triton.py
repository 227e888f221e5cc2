"""Pytest plugin: a real Triton serving the repo's ``minilm_encoder`` for the session.

Registered from the main conftest (``pytest_plugins = ["tests.fixtures_triton"]``) or
on the command line with ``-p tests.fixtures_triton``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.devstack.triton import TritonEndpoints, start_triton, stop_triton, tritonserver_available

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO_ROOT / "triton_models"
ENCODER_MODEL = "minilm_encoder"


@pytest.fixture(scope="session")
def triton_encoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonEndpoints]:
    """Endpoints of a tritonserver started by tagloop's launcher with ``minilm_encoder`` loaded."""
    reason = tritonserver_available()
    if reason is not None:
        pytest.skip(f"bundled tritonserver unavailable: {reason}")
    state_dir = tmp_path_factory.mktemp("triton-state")
    endpoints = start_triton(state_dir, MODEL_REPOSITORY, [ENCODER_MODEL])
    try:
        yield endpoints
    finally:
        stop_triton(state_dir)
