"""Ray Serve's Python proxy: answer a request whose replica died with 503 `unavailable`, not a bare 500.

HAProxy is the ingress (app/serve/node.py), and answers so itself (app/serve/haproxy.py); Serve's Python
proxy still runs on the head node as HAProxy's fallback while no replica is up, and is the ingress on a
cluster whose nodes set `RAY_SERVE_ENABLE_HA_PROXY=0`. When a replica dies with requests in flight (a
crash, a node lost, `ray.kill`), that proxy finds no answer to forward and its server sends `500 Internal
Server Error` in plain text, which clients do not retry. The work was not done, and another replica can
do it: this middleware sends the service's own 503 body with `Retry-After`, which the client library
retries. Serve loads it from `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=app.serve.proxy:middlewares` into
every proxy, and into each replica's own HTTP server, where it never fires: the app there always answers.
"""

from __future__ import annotations

import logging

from clip_client.codes import ErrorCode
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import RETRY_AFTER_S, error_response

log = logging.getLogger("app.serve.proxy")

REPLICA_LOST = "the replica answering this request stopped before it answered; retry"


class ReplicaLostMiddleware:
    """Send 503 `unavailable` when the proxy ends an HTTP request without having started an answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._answered(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _answered(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if started:
                raise
            log.exception("the proxy failed before answering")
        if not started:
            response = error_response(ErrorCode.UNAVAILABLE, REPLICA_LOST, 503, headers={"Retry-After": RETRY_AFTER_S})
            await response(scope, receive, send)


def middlewares() -> list[Middleware]:
    """Return the proxy's extra middlewares (Serve's HTTP proxy callback)."""
    return [Middleware(ReplicaLostMiddleware)]
