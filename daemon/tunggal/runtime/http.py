"""The daemon's small HTTP face: /metrics, /healthz, /readyz and /status (JSON).

/healthz says whether the process works (a supervisor restarts it if not); /readyz whether it
does its job: started, and the target takes its writes. While the target is down the daemon is
healthy (it holds the batch and retries, nothing is lost) but not ready, so a load balancer or
a dashboard shows it, and a restart would not help."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tunggal.metrics import Metrics


class StatusServer:
    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        ready: Callable[[], bool],
        healthy: Callable[[], bool],
    ) -> None:
        handler = _make_handler(metrics, ready, healthy)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="tunggal-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> StatusServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _make_handler(
    metrics: Metrics, ready: Callable[[], bool], healthy: Callable[[], bool]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = healthy()
                self._send(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
            elif path == "/readyz":
                if not ready():
                    self._send(503, b"not ready\n")
                elif not metrics.target_is_up():
                    error = metrics.target.error or "?"
                    self._send(503, f"not ready: target down: {error}\n".encode())
                else:
                    self._send(200, b"ready\n")
            elif path == "/status":
                self._send(200, orjson.dumps(metrics.status()), "application/json")
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Scrapes every few seconds would drown the daemon's own log.
            pass

    return Handler
