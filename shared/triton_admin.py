"""Production admin client of a Triton server: load, unload, readiness and per-version statistics.

Speaks Triton's model-repository and statistics extensions over HTTP (``tritonclient.http``),
for a server started with ``--model-control-mode=explicit``. This is what the trainer and the
ops commands use against any Triton; the dev launcher (:mod:`shared.devstack.triton`) only starts
the local one. Inference is not here: that is :mod:`shared.triton_client`.

Examples
--------
>>> with TritonAdmin("127.0.0.1:8000") as admin:  # doctest: +SKIP
...     admin.load("tag_model")
...     admin.is_ready("tag_model", 2)
...     admin.stats("tag_model")[2].success_count
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

READY = "READY"


class TritonAdminError(RuntimeError):
    """Triton refused or failed a request; the message carries Triton's reason."""


@dataclass(frozen=True)
class VersionStats:
    """Cumulative statistics of one model version since it was loaded (Triton's statistics extension).

    ``inference_count`` counts items (a batch of 8 is 8), ``execution_count`` model executions;
    ``success_count`` / ``fail_count`` count requests. Times are totals in nanoseconds.
    """

    model: str
    version: int
    inference_count: int
    execution_count: int
    success_count: int
    fail_count: int
    success_ns: int
    queue_ns: int
    compute_ns: int  # input + infer + output
    last_inference_ms: int  # epoch milliseconds, 0 if never

    @property
    def mean_request_ms(self) -> float:
        """Mean end-to-end time of a successful request inside Triton (0 when none)."""
        return self.success_ns / self.success_count / 1e6 if self.success_count else 0.0


def _count(stats: dict[str, Any], name: str) -> tuple[int, int]:
    part = stats.get(name) or {}
    return int(part.get("count", 0)), int(part.get("ns", 0))


def parse_version_stats(entry: dict[str, Any]) -> VersionStats:
    """One ``model_stats`` entry of ``GET /v2/models/<m>/stats`` as :class:`VersionStats`."""
    inference = entry.get("inference_stats") or {}
    success, success_ns = _count(inference, "success")
    fail, _ = _count(inference, "fail")
    _, queue_ns = _count(inference, "queue")
    compute_ns = sum(_count(inference, k)[1] for k in ("compute_input", "compute_infer", "compute_output"))
    return VersionStats(
        model=str(entry["name"]), version=int(entry["version"]),
        inference_count=int(entry.get("inference_count", 0)), execution_count=int(entry.get("execution_count", 0)),
        success_count=success, fail_count=fail, success_ns=success_ns, queue_ns=queue_ns, compute_ns=compute_ns,
        last_inference_ms=int(entry.get("last_inference", 0)),
    )  # fmt: skip


def config_json(pbtxt: str) -> str:
    """A ``config.pbtxt`` (protobuf text) as the JSON that :meth:`TritonAdmin.load` overrides with.

    Triton's load API takes a configuration override only as JSON; tagloop renders its configs as
    protobuf text (:func:`shared.model_repository.render_tag_model_config`). Parsing against
    Triton's own ``ModelConfig`` message also rejects a misspelt field here, not in the server.

    Raises
    ------
    ValueError
        If ``pbtxt`` is not a valid model configuration.
    """
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    try:
        message = text_format.Parse(pbtxt, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"not a Triton model configuration: {exc}") from exc
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)


class TritonAdmin:
    """Model control and statistics of one Triton server.

    Parameters
    ----------
    http_url : str
        ``host:port`` of Triton's HTTP endpoint (``settings.triton.http_url``).
    timeout_s : float
        Network timeout of one call. Loading a model answers only once it is loaded (or failed),
        so this bounds the slowest load: minutes for a large model on a busy CPU.
    """

    def __init__(self, http_url: str, timeout_s: float = 300.0) -> None:
        import tritonclient.http as httpclient

        url = http_url.split("://", 1)[-1]
        self._client = httpclient.InferenceServerClient(url, connection_timeout=10.0, network_timeout=timeout_s)
        self.http_url = url

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TritonAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            raise TritonAdminError(f"triton at {self.http_url}: {what} failed: {exc.message()}") from exc
        except OSError as exc:  # refused, reset, timed out
            raise TritonAdminError(f"triton at {self.http_url}: {what} failed: {exc}") from exc

    def server_ready(self) -> bool:
        """Whether the server answers ready (False when unreachable)."""
        try:
            return bool(self._call("health", self._client.is_server_ready))
        except TritonAdminError:
            return False

    def is_ready(self, model: str, version: int | str | None = None) -> bool:
        """Whether ``model`` (one ``version``, or its default version) is loaded and ready."""
        which = "" if version is None else str(version)
        try:
            return bool(self._call("ready", self._client.is_model_ready, model, which))
        except TritonAdminError:
            return False

    def load(self, model: str, config: str | None = None) -> None:
        """Load (or reload: new versions, a changed ``config.pbtxt``) ``model``; returns once Triton answered.

        Parameters
        ----------
        config : str or None
            Model configuration as JSON to use instead of the repository's ``config.pbtxt``
            (Triton's load override); None reads the repository.

        Raises
        ------
        TritonAdminError
            With Triton's reason, when the load is refused or fails.
        """
        self._call(f"loading {model!r}", self._client.load_model, model, config=config)

    def unload(self, model: str, wait_s: float = 60.0) -> None:
        """Unload every version of ``model`` and wait (up to ``wait_s``) until it no longer answers ready.

        Triton lets in-flight requests finish first, so the wait is bounded by the slowest request.
        """
        self._call(f"unloading {model!r}", self._client.unload_model, model)
        deadline = time.monotonic() + wait_s
        while self.is_ready(model):
            if time.monotonic() > deadline:
                raise TritonAdminError(f"triton at {self.http_url}: {model!r} still ready {wait_s:.0f}s after unload")
            time.sleep(0.1)

    def wait_ready(self, model: str, version: int | str | None = None, timeout_s: float = 120.0) -> None:
        """Block until ``model`` (``version``) is ready; raise :class:`TritonAdminError` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.is_ready(model, version):
            if time.monotonic() > deadline:
                which = f"{model!r} version {version}" if version is not None else repr(model)
                raise TritonAdminError(f"triton at {self.http_url}: {which} not ready after {timeout_s:.0f}s")
            time.sleep(0.2)

    def repository_index(self) -> list[dict[str, Any]]:
        """Every model version the repository holds: ``{"name", "version", "state", "reason"}`` dicts."""
        return list(self._call("repository index", self._client.get_model_repository_index) or [])

    def ready_versions(self, model: str) -> list[int]:
        """Versions of ``model`` that are loaded and ready, ascending."""
        rows = self.repository_index()
        return sorted(int(r["version"]) for r in rows if r.get("name") == model and r.get("state") == READY
                      and str(r.get("version", "")).isdigit())  # fmt: skip

    def stats(self, model: str) -> dict[int, VersionStats]:
        """Statistics of every loaded version of ``model``, by version."""
        raw = self._call(f"statistics of {model!r}", self._client.get_inference_statistics, model) or {}
        return {s.version: s for s in map(parse_version_stats, raw.get("model_stats", []))}
