"""A static server for the load generator: the photos of a folder, held in memory, served by aiohttp.

It runs as its own process, so that serving photos neither shares the load generator's GIL nor costs
a thread and a TCP connection per download (Python's http.server answers HTTP/1.0, one thread each).
127.0.0.1 only.

Usage: python -m bench.static --folder ../shared/photos --glob '*-1mp.jpg' --port 8900
"""

from __future__ import annotations

import argparse
import glob
import mimetypes
import os
import socket
import subprocess
import sys
import time

from aiohttp import web

from scripts.procs import stop


def load_photos(folder: str, pattern: str) -> dict[str, tuple[bytes, str]]:
    """Read the files of `folder` matching `pattern`: name → (bytes, content type)."""
    photos = {}
    for path in sorted(glob.glob(os.path.join(folder, pattern))):
        with open(path, "rb") as f:
            photos[os.path.basename(path)] = (f.read(), mimetypes.guess_type(path)[0] or "application/octet-stream")
    return photos


def make_app(photos: dict[str, tuple[bytes, str]]) -> web.Application:
    """Answer GET /<name> with the photo's bytes, 404 for any other name."""

    async def photo(request: web.Request) -> web.Response:
        found = photos.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        return web.Response(body=found[0], content_type=found[1])

    app = web.Application()
    app.router.add_get("/{name}", photo)
    return app


def start(folder: str, pattern: str, port: int, wait_s: float = 20.0) -> subprocess.Popen[bytes]:
    """Start one static server process on 127.0.0.1:`port` and return once it accepts connections."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.static",
            "--folder",
            os.path.abspath(folder),
            "--glob",
            pattern,
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the static server on port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    stop(proc)
    raise SystemExit(f"the static server on port {port} did not start within {wait_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--glob", default="*")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    photos = load_photos(args.folder, args.glob)
    if not photos:
        raise SystemExit(f"no files match {args.glob} in {args.folder}")
    web.run_app(make_app(photos), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
