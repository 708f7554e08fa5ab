"""Serve local images over HTTP while indexing, because the service embeds images by URL."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep one line per request off the terminal: the progress bar is there."""


@contextmanager
def serve_files(root: Path, bind: str, port: int, public_url: str | None) -> Iterator[str]:
    """Serve `root` on `bind`:`port` (0: any free port) and yield the base URL the service should fetch from.

    `public_url` is that base when the service reaches this machine by another name (a tunnel, a
    proxy, a bucket the folder is synced to); by default it is http://`bind`:port.
    """
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer((bind, port), handler)
    thread = threading.Thread(target=server.serve_forever, name="frame-server", daemon=True)
    thread.start()
    try:
        yield (public_url or f"http://{bind}:{server.server_address[1]}").rstrip("/")
    finally:
        server.shutdown()
        server.server_close()


def url_for(base: str, root: Path, path: Path) -> str:
    """Return the URL under `base` of a file below `root`."""
    return f"{base}/{quote(path.relative_to(root).as_posix())}"
