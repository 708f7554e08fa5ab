"""Container health probe: `python -m app.ops.probe [PATH]` exits 0 when http://127.0.0.1:$PORT/PATH answers 200.

PATH defaults to /health; the port comes from PORT (default 8000). Used by Dockerfile.pod's HEALTHCHECK,
so that the image needs no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def probe(path: str = "/health", port: int | None = None, timeout_s: float = 4.0) -> int:
    """Return 0 when the local server answers `path` with 200, else 1 (printing why)."""
    port = port or int(os.environ.get("PORT", "8000"))
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return 0 if resp.status == 200 else 1
    except urllib.error.HTTPError as err:
        print(f"{url}: HTTP {err.code} {err.read(300).decode('utf-8', 'replace')}", file=sys.stderr)
    except OSError as err:
        print(f"{url}: {err}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(probe(sys.argv[1] if len(sys.argv) > 1 else "/health"))
