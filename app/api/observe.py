"""Per-request observation: X-Request-ID, one structured log line, request metrics, /v1 requests in flight.

A pure ASGI middleware (it must not buffer bodies); it sits outside every other middleware, so each
answer — 413s and 500s included — is counted and logged once.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass, field

from clip_client.codes import ErrorCode
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.ops.metrics import endpoint_label
from app.services import Services

log = logging.getLogger("app.request")

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Probes are polled every few seconds: their lines are logged at debug level only.
_PROBES = frozenset({"/health", "/live", "/metrics"})


@dataclass(slots=True)
class RequestRecord:
    """What the log line and the metrics say about one request; handlers fill in items and the errors.

    `error_code` is the request's own error; `failed_items` the codes of items that failed inside
    the answer (a batch's), or beside the one item a failed request names. Each is counted once.
    """

    request_id: str
    endpoint: str
    items: int | None = None
    error_code: str | None = None
    failed_items: list[str] = field(default_factory=list)


def request_id_from(scope: Scope) -> str:
    """Return the caller's X-Request-ID when it is short and plain, else a new random one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class ObserveMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope.get("path", "")
        record = RequestRecord(request_id_from(scope), endpoint_label(path))
        state = scope.setdefault("state", {})
        state["record"] = record
        services: Services | None = state.get("services")
        status = 500
        finished = False

        def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                _finish(services, scope, path, record, status, time.perf_counter() - started)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = record.request_id
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Log and count before the last byte leaves, so a caller that has its answer
                # also finds it in the log and the metrics.
                finish()
            await send(message)

        tracked = services is not None and path.startswith("/v1/")
        if tracked:
            services.requests.enter()  # type: ignore[union-attr]
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500
            record.error_code = record.error_code or ErrorCode.INTERNAL_ERROR
            raise
        finally:
            if tracked:
                services.requests.exit()  # type: ignore[union-attr]
            finish()


def _finish(
    services: Services | None, scope: Scope, path: str, record: RequestRecord, status: int, seconds: float
) -> None:
    if services is not None:
        m = services.metrics
        m.requests.labels(record.endpoint, str(status)).inc()
        m.request_seconds.labels(record.endpoint).observe(seconds)
        for code in record.failed_items:
            m.errors.labels(code).inc()
        if record.error_code is not None:
            m.errors.labels(record.error_code).inc()
    method = scope.get("method", "")
    duration_ms = round(seconds * 1000, 2)
    log.log(
        logging.DEBUG if path in _PROBES else logging.INFO,
        "%s %s %d %.1fms",
        method,
        path[:200],
        status,
        duration_ms,
        extra={
            "request_id": record.request_id,
            "method": method,
            "endpoint": record.endpoint,
            "path": path[:200],
            "status": status,
            "items": record.items,
            "duration_ms": duration_ms,
            "error_code": record.error_code,
        },
    )
