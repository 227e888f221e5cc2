"""Small clients for tagloop's text models on Triton (``TEXT`` BYTES ``[batch, 1]`` in).

:class:`TritonTextClient` is a blocking HTTP client (scripts, the trainer, tests);
:class:`AsyncTritonTextClient` is an asyncio gRPC client that is safe to call many
times concurrently, so the tagger can keep Triton's dynamic batcher fed.

Both return every output of the model as ``{name: np.ndarray}``, split requests
larger than the model's ``max_batch_size`` into several, and let tritonclient's
``InferenceServerException`` propagate; :func:`is_retryable` says whether a failure
is worth retrying.

A dead Python-backend stub (measured on tritonserver 2.51, ``tests/integration/test_faults_triton.py``):
Triton does not restart it. Every request to that model instance fails with INTERNAL
(HTTP 500) "Stub process '<model>_0_0' is not healthy." after ~1 s, while the server's
and the model's ready endpoints go on answering *ready*; only unloading and loading the
model again (or restarting Triton) starts a new stub. Those failures are retryable, and
after one, ``ready()`` no longer trusts the ready endpoints alone: it runs a one-text
probe inference, so a caller that waits for ``ready()`` waits for a working model.

Examples
--------
>>> client = TritonTextClient("127.0.0.1:8000", "minilm_encoder")   # doctest: +SKIP
>>> client.infer(["red cotton kurta"])["EMBEDDING"].shape           # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

INPUT_NAME = "TEXT"
# What ready() sends once the model has failed a request: one short text, one forward pass.
PROBE_TEXTS = ["ready probe"]

# gRPC codes (str(grpc.StatusCode.X) == "StatusCode.X") and HTTP statuses that mean
# "the server could not serve this now" -- as opposed to "this request is wrong".
_RETRYABLE_GRPC = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "RESOURCE_EXHAUSTED", "ABORTED"}
)
_RETRYABLE_HTTP = frozenset({408, 429})

# gRPC's default reconnect backoff grows to 120 s: after a Triton restart the tagger would
# sit idle for many seconds with a healthy server. Cap it at 1 s; the rest are the defaults.
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed call to Triton may succeed if retried.

    Parameters
    ----------
    exc : BaseException
        What the client raised.

    Returns
    -------
    bool
        True for unavailability (connection refused or reset, server or model not
        ready), server errors (HTTP 5xx, gRPC INTERNAL/UNKNOWN; a dead Python-backend
        stub answers INTERNAL / 500 "Stub process ... is not healthy.") and timeouts
        (gRPC DEADLINE_EXCEEDED, socket timeouts); False for invalid requests (HTTP 4xx,
        gRPC INVALID_ARGUMENT/NOT_FOUND/UNIMPLEMENTED, ...) and anything else.
    """
    if isinstance(exc, InferenceServerException):
        status = exc.status()
        if status is None:
            return False
        status = str(status)
        if status.startswith("StatusCode."):
            return status.removeprefix("StatusCode.") in _RETRYABLE_GRPC
        if status.isdigit():
            code = int(status)
            return code >= 500 or code in _RETRYABLE_HTTP
        return False
    # Transport failures below tritonclient: refused/reset connections, socket timeouts.
    return isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError))


def text_batch(texts: Sequence[str]) -> np.ndarray:
    """``[n, 1]`` object array of UTF-8 bytes, the layout of a ``TEXT`` input."""
    if isinstance(texts, str):
        raise TypeError("expected a sequence of texts, not a single str")
    return np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(-1, 1)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _empty_outputs(outputs: Sequence[tuple[str, str, Sequence[int]]]) -> dict[str, np.ndarray]:
    """Zero-row arrays shaped like the model's outputs, the answer to an empty request."""
    result = {}
    for name, datatype, shape in outputs:
        dims = [0, *(max(int(d), 0) for d in list(shape)[1:])]
        result[name] = np.zeros(dims, dtype=triton_to_np_dtype(datatype))
    return result


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}


class TritonTextClient:
    """Blocking HTTP client of one text model.

    Parameters
    ----------
    url : str
        Triton's HTTP address, ``host:port``.
    model_name : str
        The model, e.g. ``"minilm_encoder"``.
    timeout_s : float
        Connection and network timeout of each call.
    model_version : str
        Pin one version; ``""`` lets Triton pick (the newest loaded one).
    """

    def __init__(self, url: str, model_name: str, timeout_s: float = 30.0, model_version: str = "") -> None:
        import tritonclient.http as httpclient

        self._http = httpclient
        self.url, self.model_name, self.timeout_s = url, model_name, timeout_s
        self.version = model_version
        self._client: Any = httpclient.InferenceServerClient(
            url, connection_timeout=timeout_s, network_timeout=timeout_s
        )
        self._max_batch: int | None = None
        self._outputs: list[tuple[str, str, Sequence[int]]] | None = None
        self._failing = False  # the last request failed on the server's side (see ready())

    def infer(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Run the model on ``texts``; every output, one row per text, in order.

        Raises
        ------
        InferenceServerException
            If Triton fails the request (see :func:`is_retryable`).
        """
        batch = text_batch(texts)
        if len(batch) == 0:
            return _empty_outputs(self._output_specs())
        parts = []
        for start, end in _chunks(len(batch), self._max_batch_size()):
            inp = self._http.InferInput(INPUT_NAME, [end - start, 1], "BYTES")
            inp.set_data_from_numpy(batch[start:end])
            try:
                result = self._client.infer(self.model_name, [inp], model_version=self.version)
            except Exception as exc:
                self._failing = is_retryable(exc)
                raise
            self._failing = False
            names = [o["name"] for o in result.get_response()["outputs"]]
            parts.append({name: result.as_numpy(name) for name in names})
        return _concat(parts)

    def ready(self) -> bool:
        """True if the server is ready and serves the model (never raises).

        After a request failed on the server's side, a probe inference must succeed
        too: Triton reports a model whose stub died as ready (see the module notes).
        """
        try:
            if not (self._client.is_server_ready() and self.model_ready()):
                return False
            if self._failing:
                self.infer(PROBE_TEXTS)
            return True
        except Exception:
            return False

    def model_ready(self) -> bool:
        """True if the model (the pinned version, if any) is loaded and ready (never raises)."""
        try:
            return bool(self._client.is_model_ready(self.model_name, self.version))
        except Exception:
            return False

    def model_version(self) -> str:
        """The version this client's requests go to: the pinned one, else the newest loaded."""
        if self.version:
            return self.version
        metadata = self._client.get_model_metadata(self.model_name)
        return str(max(metadata["versions"], key=int))

    def close(self) -> None:
        self._client.close()

    def _max_batch_size(self) -> int:
        if self._max_batch is None:
            config = self._client.get_model_config(self.model_name, self.version)
            self._max_batch = int(config.get("max_batch_size") or 0) or 1 << 30
        return self._max_batch

    def _output_specs(self) -> list[tuple[str, str, Sequence[int]]]:
        if self._outputs is None:
            metadata = self._client.get_model_metadata(self.model_name, self.version)
            self._outputs = [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]]
        return self._outputs


class AsyncTritonTextClient:
    """asyncio gRPC client of one text model; many :meth:`infer` calls may be in flight.

    Parameters
    ----------
    grpc_url : str
        Triton's gRPC address, ``host:port``.
    model_name : str
        The model, e.g. ``"minilm_encoder"``.
    timeout_s : float
        Deadline of each call.
    model_version : str
        Pin one version; ``""`` lets Triton pick (the newest loaded one).
    """

    def __init__(
        self, grpc_url: str, model_name: str, timeout_s: float = 30.0, model_version: str = ""
    ) -> None:
        self.url, self.model_name, self.timeout_s = grpc_url, model_name, timeout_s
        self.version = model_version
        # The gRPC channel binds to the event loop that first uses it: create it there.
        self._client: Any = None
        self._max_batch: int | None = None
        self._outputs: list[tuple[str, str, Sequence[int]]] | None = None
        self._failing = False  # the last request failed on the server's side (see ready())

    def _grpc(self) -> Any:
        if self._client is None:
            import tritonclient.grpc.aio as grpcclient

            self._client = grpcclient.InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS)
        return self._client

    async def infer(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Run the model on ``texts``; every output, one row per text, in order.

        Batches larger than the model's ``max_batch_size`` go as concurrent requests.

        Raises
        ------
        InferenceServerException
            If Triton fails the request (see :func:`is_retryable`).
        """
        batch = text_batch(texts)
        if len(batch) == 0:
            return _empty_outputs(await self._output_specs())
        chunks = _chunks(len(batch), await self._max_batch_size())
        parts = await asyncio.gather(*(self._infer_chunk(batch[start:end]) for start, end in chunks))
        return _concat(list(parts))

    async def _infer_chunk(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import tritonclient.grpc.aio as grpcclient

        inp = grpcclient.InferInput(INPUT_NAME, [len(batch), 1], "BYTES")
        inp.set_data_from_numpy(batch)
        try:
            result = await self._grpc().infer(
                self.model_name, [inp], model_version=self.version, client_timeout=self.timeout_s
            )
        except Exception as exc:
            self._failing = is_retryable(exc)
            raise
        self._failing = False
        names = [o.name for o in result.get_response().outputs]
        return {name: result.as_numpy(name) for name in names}

    async def ready(self) -> bool:
        """True if the server is ready and serves the model (never raises).

        After a request failed on the server's side, a probe inference must succeed
        too: Triton reports a model whose stub died as ready (see the module notes).
        """
        try:
            server = await self._grpc().is_server_ready(client_timeout=self.timeout_s)
        except Exception:
            return False
        if not (server and await self.model_ready()):
            return False
        if self._failing:
            try:
                await self.infer(PROBE_TEXTS)
            except Exception:
                return False
        return True

    async def model_ready(self) -> bool:
        """True if the model (the pinned version, if any) is loaded and ready (never raises)."""
        try:
            ready = await self._grpc().is_model_ready(
                self.model_name, self.version, client_timeout=self.timeout_s
            )
        except Exception:
            return False
        return bool(ready)

    async def model_version(self) -> str:
        """The version this client's requests go to: the pinned one, else the newest loaded."""
        if self.version:
            return self.version
        metadata = await self._grpc().get_model_metadata(
            self.model_name, as_json=True, client_timeout=self.timeout_s
        )
        return str(max(metadata["versions"], key=int))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _max_batch_size(self) -> int:
        if self._max_batch is None:
            response = await self._grpc().get_model_config(
                self.model_name, self.version, as_json=True, client_timeout=self.timeout_s
            )
            self._max_batch = int(response["config"].get("max_batch_size") or 0) or 1 << 30
        return self._max_batch

    async def _output_specs(self) -> list[tuple[str, str, Sequence[int]]]:
        if self._outputs is None:
            metadata = await self._grpc().get_model_metadata(
                self.model_name, self.version, as_json=True, client_timeout=self.timeout_s
            )
            self._outputs = [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]]
        return self._outputs
