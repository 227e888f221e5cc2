"""The MiniLM encoder served by the real bundled Triton, started by tagloop's launcher."""

from __future__ import annotations

import asyncio
import csv
import gzip
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shared.devstack.process import ManagedProcess, StackError, port_open
from shared.devstack.triton import (
    TritonEndpoints,
    load_model,
    model_ready,
    start_triton,
    stop_triton,
    triton_ready,
    unload_model,
)
from shared.encoder import EMBEDDING_DIM, MiniLMEncoder
from shared.triton_client import AsyncTritonTextClient, TritonTextClient, is_retryable

pytestmark = pytest.mark.integration

MODEL = "minilm_encoder"
REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT.parent / "shared" / "data"
FALLBACK_TITLES = [
    "Alisha Solid Women's Cycling Shorts",
    "FabHomeDecor Fabric Double Sofa Bed",
    "AW Bellies",
    "Sicons All Purpose Arnica Dog Shampoo",
    "Eternal Gandhi Super Series Crystal Paper Weights with Silver Finish",
]


def product_titles(n: int = 20) -> list[str]:
    """The first ``n`` distinct Flipkart product titles (a few fixed ones without the data)."""
    path = DATA_DIR / "flipkart" / "products.csv.gz"
    if not path.exists():
        return FALLBACK_TITLES
    titles: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            title = row["product_name"].strip()
            if title and title not in titles:
                titles.append(title)
            if len(titles) == n:
                break
    return titles


def wait_until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder()


@pytest.fixture(scope="module")
def titles() -> list[str]:
    return product_titles()


def test_http_embeddings_equal_in_process(
    triton_encoder: TritonEndpoints, encoder: MiniLMEncoder, titles: list[str]
) -> None:
    client = TritonTextClient(triton_encoder.http_url, MODEL, timeout_s=60)
    try:
        assert client.ready()
        assert client.model_version() == "1"
        out = client.infer(titles)
    finally:
        client.close()
    assert set(out) == {"EMBEDDING"}
    served = out["EMBEDDING"]
    expected = encoder.encode(titles)
    assert served.shape == (len(titles), EMBEDDING_DIM) and served.dtype == np.float32
    diff = float(np.abs(served - expected).max())
    print(f"HTTP: max abs difference Triton vs in-process over {len(titles)} titles = {diff:.3g}")
    assert diff <= 1e-4


def test_async_grpc_embeddings_equal_in_process(
    triton_encoder: TritonEndpoints, encoder: MiniLMEncoder, titles: list[str]
) -> None:
    async def run() -> tuple[dict[str, np.ndarray], bool, str, dict[str, np.ndarray]]:
        client = AsyncTritonTextClient(triton_encoder.grpc_url, MODEL, timeout_s=60)
        try:
            return await client.infer(titles), await client.ready(), await client.model_version(), (
                await client.infer([])
            )
        finally:
            await client.close()

    out, ready, version, empty = asyncio.run(run())
    assert ready and version == "1"
    diff = float(np.abs(out["EMBEDDING"] - encoder.encode(titles)).max())
    print(f"gRPC: max abs difference Triton vs in-process over {len(titles)} titles = {diff:.3g}")
    assert diff <= 1e-4
    assert empty["EMBEDDING"].shape == (0, EMBEDDING_DIM)


def test_batches_larger_than_max_batch_size_are_split(
    triton_encoder: TritonEndpoints, encoder: MiniLMEncoder, titles: list[str]
) -> None:
    texts = [f"{titles[i % len(titles)]} pack of {i}" for i in range(150)]  # max_batch_size is 64
    client = TritonTextClient(triton_encoder.http_url, MODEL, timeout_s=120)
    try:
        served = client.infer(texts)["EMBEDDING"]
    finally:
        client.close()
    np.testing.assert_allclose(served, encoder.encode(texts), atol=1e-4)


def _execution_and_inference_counts(http_url: str) -> tuple[int, int]:
    client = httpclient.InferenceServerClient(http_url)
    try:
        stats = client.get_inference_statistics(MODEL)["model_stats"][0]
    finally:
        client.close()
    return int(stats["execution_count"]), int(stats["inference_count"])


def test_64_concurrent_requests_are_batched(
    triton_encoder: TritonEndpoints, encoder: MiniLMEncoder, titles: list[str]
) -> None:
    texts = [f"{titles[i % len(titles)]} (variant {i})" for i in range(64)]
    executions_before, inferences_before = _execution_and_inference_counts(triton_encoder.http_url)

    async def run() -> list[dict[str, np.ndarray]]:
        client = AsyncTritonTextClient(triton_encoder.grpc_url, MODEL, timeout_s=120)
        try:
            return list(await asyncio.gather(*(client.infer([text]) for text in texts)))
        finally:
            await client.close()

    results = asyncio.run(run())
    served = np.concatenate([r["EMBEDDING"] for r in results])
    np.testing.assert_allclose(served, encoder.encode(texts), atol=1e-4)

    executions_after, inferences_after = _execution_and_inference_counts(triton_encoder.http_url)
    assert inferences_after - inferences_before == 64
    # The dynamic batcher merged the single-text requests into fewer model executions.
    assert executions_after - executions_before < 64


@pytest.mark.parametrize("bad", [b"", b"   ", b"\xff\xfe not utf-8"], ids=["empty", "blank", "not-utf8"])
def test_invalid_text_is_an_input_error_and_the_server_stays_ready(
    triton_encoder: TritonEndpoints, bad: bytes
) -> None:
    client = httpclient.InferenceServerClient(triton_encoder.http_url)
    try:
        inp = httpclient.InferInput("TEXT", [2, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b"fine title"], [bad]], dtype=np.object_))
        with pytest.raises(InferenceServerException) as err:
            client.infer(MODEL, [inp])
    finally:
        client.close()
    assert err.value.status() == "400"
    assert not is_retryable(err.value)
    assert triton_ready(triton_encoder.http_url)
    assert model_ready(triton_encoder.http_url, MODEL)


def test_empty_text_via_the_async_client_is_not_retryable(triton_encoder: TritonEndpoints) -> None:
    async def run() -> BaseException:
        client = AsyncTritonTextClient(triton_encoder.grpc_url, MODEL, timeout_s=60)
        try:
            with pytest.raises(InferenceServerException) as err:
                await client.infer(["a good title", ""])
            # The instance survived the bad request and still answers.
            assert (await client.infer(["a good title"]))["EMBEDDING"].shape == (1, EMBEDDING_DIM)
            return err.value
        finally:
            await client.close()

    error = asyncio.run(run())
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert not is_retryable(error)


def test_wrong_dtype_is_rejected_and_not_retryable(triton_encoder: TritonEndpoints) -> None:
    client = grpcclient.InferenceServerClient(triton_encoder.grpc_url)
    try:
        inp = grpcclient.InferInput("TEXT", [1, 1], "INT32")
        inp.set_data_from_numpy(np.array([[7]], dtype=np.int32))
        with pytest.raises(InferenceServerException) as err:
            client.infer(MODEL, [inp])
        assert client.is_server_ready() and client.is_model_ready(MODEL)
    finally:
        client.close()
    assert not is_retryable(err.value)


@pytest.mark.slow  # 25-60 s: keeps the default suite under 15 minutes
def test_start_stop_and_explicit_model_control(tmp_path: Path) -> None:
    """A second server: model unload/load, then stop closes the port and removes the pid file."""
    state_dir = tmp_path / "state"
    endpoints = start_triton(state_dir, REPO_ROOT / "triton_models", [MODEL], name="triton-2")
    proc = ManagedProcess("triton-2", state_dir)
    try:
        host, port = endpoints.http_url.rsplit(":", 1)
        assert proc.pid_file.exists() and port_open(host, int(port))
        assert all(url.startswith("127.0.0.1:") for url in (endpoints.grpc_url, endpoints.metrics_url))

        with pytest.raises(StackError, match="already running"):
            start_triton(state_dir, REPO_ROOT / "triton_models", [MODEL], name="triton-2")

        unload_model(endpoints.http_url, MODEL)
        assert wait_until(lambda: not model_ready(endpoints.http_url, MODEL), timeout_s=30)
        load_model(endpoints.http_url, MODEL)
        assert model_ready(endpoints.http_url, MODEL)
        with pytest.raises(StackError, match="no_such_model"):
            load_model(endpoints.http_url, "no_such_model")
    finally:
        assert stop_triton(state_dir, name="triton-2")
    assert not proc.pid_file.exists()
    assert not port_open(host, int(port))
    assert not stop_triton(state_dir, name="triton-2")

    # With the server gone, a call fails as "unavailable": worth retrying.
    client = TritonTextClient(endpoints.http_url, MODEL, timeout_s=5)
    with pytest.raises(Exception) as err:
        client.infer(["anything"])
    assert is_retryable(err.value)


def test_a_model_that_fails_to_load_raises_stack_error_naming_the_log(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
        'output [{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
    )
    (repo / "broken" / "1" / "model.py").write_text(
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        raise RuntimeError('deliberately broken model')\n"
    )
    state_dir = tmp_path / "state"
    with pytest.raises(StackError) as err:
        start_triton(state_dir, repo, ["broken"], timeout_s=120, name="triton-broken")
    message = str(err.value)
    assert "triton-broken" in message and str(state_dir / "logs" / "triton-broken.log") in message
    assert "deliberately broken model" in (state_dir / "logs" / "triton-broken.log").read_text()
    assert not ManagedProcess("triton-broken", state_dir).running()
    assert not (state_dir / "triton-broken.pid").exists()
