"""A real HTTP server on 127.0.0.1 that serves images and misbehaves on request."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, urlsplit


class _Handler(BaseHTTPRequestHandler):
    server: ImageServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.server.record(parts.path)
        route = parts.path.strip("/").split("/", 1)
        handler = getattr(self, f"_route_{route[0].replace('-', '_')}", None)
        if handler is None:
            return self._send(404, b"not found", "text/plain")
        handler(route[1] if len(route) > 1 else "", query)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _route_img(self, name: str, query: dict[str, str]) -> None:
        body = self.server.files.get(name)
        if body is None:
            return self._send(404, b"no such image", "text/plain")
        self._send(200, body, query.get("ctype", "image/jpeg"))

    def _route_status(self, code: str, query: dict[str, str]) -> None:
        self._send(int(code), b"status " + code.encode(), "text/plain")

    def _route_slow(self, name: str, query: dict[str, str]) -> None:
        time.sleep(float(query.get("delay", "5")))
        self._route_img(name, query)

    def _route_gated(self, name: str, query: dict[str, str]) -> None:
        """Hold the answer until the test sets `server.gate` (bounded), then serve the image."""
        self.server.gate.wait(30)
        self._route_img(name, query)

    def _route_trickle(self, _: str, query: dict[str, str]) -> None:
        """Send a valid header, then one byte per interval, forever-ish."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        interval = float(query.get("interval", "1"))
        try:
            for _ in range(60):
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(interval)
        except OSError:
            pass

    def _route_unbounded(self, _: str, query: dict[str, str]) -> None:
        """Stream a body with no Content-Length (closed-delimited) until the client hangs up."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = b"\xff\xd8\xff" + b"\0" * 65533
        try:
            for _ in range(int(query.get("chunks", "2000"))):
                self.wfile.write(chunk)
        except OSError:
            pass
        self.close_connection = True

    def _route_lying_length(self, name: str, query: dict[str, str]) -> None:
        """Claim a small Content-Length, then keep sending far more (connection closed after)."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", query.get("claim", "1000"))
        self.send_header("Connection", "close")
        self.end_headers()
        body = self.server.files.get(name, b"\0" * 10) * int(query.get("repeat", "1"))
        claim = int(query.get("claim", "1000"))
        try:
            # The claimed bytes first, the surplus a moment later: the client sees a complete answer.
            self.wfile.write(body[:claim])
            self.wfile.flush()
            time.sleep(0.3)
            self.wfile.write(body[claim:])
        except OSError:
            pass
        self.close_connection = True

    def _route_redirect(self, _: str, query: dict[str, str]) -> None:
        self.send_response(302)
        self.send_header("Location", query["to"])
        self.send_header("Content-Length", "0")
        self.end_headers()


class ImageServer(ThreadingHTTPServer):
    """Serves `files` under /img/NAME; other routes simulate failures."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.gate = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up on slow or oversized answers is the point of those routes

    def record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)

    def count(self, prefix: str) -> int:
        """Return how many requests so far had a path starting with `prefix`."""
        with self._lock:
            return sum(1 for p in self.requests if p.startswith(prefix))

    @property
    def base(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
