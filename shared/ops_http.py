"""The operator's endpoint of a long-running service: ``/metrics``, ``/healthz`` and ``/readyz``.

One small threaded HTTP server, built and started explicitly (nothing listens at import).
``/metrics`` renders a Prometheus :class:`~prometheus_client.CollectorRegistry`; ``/healthz``
(liveness: restart me when failing) and ``/readyz`` (readiness: route no work to me) call a
check returning ``(ok, detail)`` and answer 200 or 503 with ``ok``/``not ok`` and the detail.
A check that raises answers 503, never 500: a probe must not crash the server. The address
comes from the caller, normally ``Settings().ops.host`` (loopback unless a container says
``0.0.0.0``, so that Prometheus in another container can scrape it).

Examples
--------
>>> import urllib.request
>>> from prometheus_client import CollectorRegistry, Counter
>>> registry = CollectorRegistry()
>>> Counter("demo_events", "Events seen", registry=registry).inc(3)
>>> with OpsServer(registry, "127.0.0.1", 0, ready=lambda: (False, "warming up")) as server:
...     urllib.request.urlopen(f"{server.url}/healthz").read()
...     b"demo_events_total 3.0" in urllib.request.urlopen(f"{server.url}/metrics").read()
...     try:
...         urllib.request.urlopen(f"{server.url}/readyz")
...     except urllib.error.HTTPError as e:
...         print(e.code, e.read())
b'ok\\n'
True
503 b'not ok: warming up\\n'
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Check = Callable[[], tuple[bool, str]]


def always_ok() -> tuple[bool, str]:
    """The default check: the process answers, so it is alive."""
    return True, ""


def _run(check: Check) -> tuple[bool, str]:
    try:
        ok, detail = check()
    except Exception as exc:  # a broken check means "not ok", not a 500 and a dead handler thread
        return False, f"check failed: {type(exc).__name__}"
    return bool(ok), str(detail)


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-answer (a probe's timeout, a scanner) is not an error to print."""

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipe, ConnectionReset
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class OpsServer:
    """Serve ``registry`` on ``/metrics`` and the two checks on ``host:port`` (port 0: any free one)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        healthy: Check = always_ok,
        ready: Check = always_ok,
        name: str = "ops-http",
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a half-open connection must not hold a thread for ever

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, detail = _run(healthy if path == "/healthz" else ready)
                    text = ("ok" if ok else "not ok") + (f": {detail}" if detail else "")
                    # One bounded line: a detail never carries a multi-line traceback out.
                    body = text.splitlines()[0][:500].encode() + b"\n"
                    self._send(200 if ok else 503, body, "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: no access log
                return

        self._server = _QuietServer((host, port), Handler)
        self._server.daemon_threads = True  # a stuck request must not keep the process from exiting
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OpsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
