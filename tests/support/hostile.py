"""An image server that also misbehaves in the ways the attack suite needs, and counts connections."""

from __future__ import annotations

import gzip
import threading
import zlib
from urllib.parse import quote

from tests.support.imageserver import ImageServer, _Handler

JPEG_MAGIC = b"\xff\xd8\xff\xe0"


def gzip_bomb(size: int) -> bytes:
    """A gzip stream that inflates to `size` bytes (a JPEG magic, then zeros), built in small pieces."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    out = [packer.compress(JPEG_MAGIC)]
    block = b"\0" * (1 << 20)
    left = size - len(JPEG_MAGIC)
    while left > 0:
        out.append(packer.compress(block[: min(left, len(block))]))
        left -= len(block)
    out.append(packer.flush())
    return b"".join(out)


class _HostileHandler(_Handler):
    server: HostileServer

    def do_GET(self) -> None:
        self.server.record_headers(dict(self.headers))
        super().do_GET()

    def _route_chunked(self, _: str, query: dict[str, str]) -> None:
        """A chunked body (no Content-Length) of `total` bytes."""
        total = int(query.get("total", "0"))
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        try:
            while sent < total:
                piece = (JPEG_MAGIC + b"\0" * 65532)[: min(65536, total - sent)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    def _route_lying(self, name: str, query: dict[str, str]) -> None:
        """Claim `claim` bytes but send files[name] `repeat` times, all in one write, then close."""
        body = self.server.files[name] * int(query.get("repeat", "1"))
        head = f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {query['claim']}\r\n"
        self.connection.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)
        self.close_connection = True

    def _route_encoded(self, name: str, query: dict[str, str]) -> None:
        """Serve files[name] with Content-Encoding `enc`: gzip/deflate compressed (unless `raw`), others as is."""
        enc = query.get("enc", "gzip")
        raw = self.server.files[name]
        packers = {"gzip": gzip.compress, "x-gzip": gzip.compress, "deflate": zlib.compress}
        body = raw if query.get("raw") else packers.get(enc, bytes)(raw)
        if query.get("cut"):
            body = body[: int(query["cut"])]
        self._send(200, body, "image/jpeg", {"Content-Encoding": enc})

    def _route_cookie(self, name: str, query: dict[str, str]) -> None:
        """Serve files[name] with a Set-Cookie header, as a tracking image server might."""
        body = self.server.files[name]
        self._send(200, body, "image/jpeg", {"Set-Cookie": "session=caller-a; Path=/; Max-Age=3600"})

    def _route_gzip_bomb(self, _: str, query: dict[str, str]) -> None:
        self._send(200, self.server.bomb(int(query["size"])), "image/jpeg", {"Content-Encoding": "gzip"})

    def _route_hops(self, count: str, query: dict[str, str]) -> None:
        """/hops/N redirects (relatively) to /hops/N-1; /hops/0 serves the image `name`."""
        n = int(count)
        if n == 0:
            return self._route_img(query.get("name", "photo.jpg"), query)
        self._redirect(f"/hops/{n - 1}?name={quote(query.get('name', 'photo.jpg'))}")

    def _route_loop(self, _: str, query: dict[str, str]) -> None:
        self._redirect("/loop")

    def _route_no_location(self, _: str, query: dict[str, str]) -> None:
        self._send(302, b"", "text/plain")

    def _redirect(self, location: str, status: int = 302) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class HostileServer(ImageServer):
    """ImageServer plus hostile routes; `connections` counts every accepted TCP connection."""

    def __init__(self) -> None:
        super().__init__()
        self.RequestHandlerClass = _HostileHandler
        self.connections = 0
        self.headers_seen: list[dict[str, str]] = []
        self._bombs: dict[int, bytes] = {}
        self._count_lock = threading.Lock()

    def process_request(self, request: object, client_address: object) -> None:
        with self._count_lock:
            self.connections += 1
        super().process_request(request, client_address)  # type: ignore[arg-type]

    def record_headers(self, headers: dict[str, str]) -> None:
        with self._count_lock:
            self.headers_seen.append(headers)

    def bomb(self, size: int) -> bytes:
        if size not in self._bombs:
            self._bombs[size] = gzip_bomb(size)
        return self._bombs[size]

    @property
    def port(self) -> int:
        return self.server_address[1]
