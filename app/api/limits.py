"""Request bodies, bounded in size, time and memory while the endpoints read them (pure ASGI).

Nothing is buffered here: an endpoint reads its body itself, after its dependencies have checked
everything that needs no body (signature headers, timestamp, API key: app.api.deps), so a request
refused for those is answered before its body is read. What this middleware adds:

- a `Content-Length` over MAX_REQUEST_BYTES is 413 `request_too_large` at once, unread;
- the bytes read are counted: past MAX_REQUEST_BYTES (a chunked body too), 413;
- the whole body must arrive within REQUEST_BODY_TIMEOUT_S of the request's start, else 408
  `request_timeout`;
- the bytes read by the requests of this process and not yet answered are charged to one budget
  (MAX_BUFFERED_REQUEST_BYTES), and so is what parsing a JSON body may take (app.api.body): a body
  whose `Content-Length` does not fit in what is left is 503 `overloaded` (with Retry-After) before
  its first byte is read, and a body that outgrows the budget while it arrives or is parsed is 503
  too (413 if it never could fit);
- an answer given before the body is complete (a 401, a 503 of the budget) first reads the rest and
  discards it, within the same size and time limits, so that the caller, which sends its whole body
  before it reads, gets the answer and not a reset connection; if that fails, and after a 408 or a
  413 in the middle of a body, the answer says `Connection: close`.
"""

from __future__ import annotations

import orjson
from clip_client.codes import ErrorCode
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_body
from app.api.reading import STATE_KEY, BodyBudget, BodyReader


class BodyLimitMiddleware:
    """Enforce MAX_REQUEST_BYTES, REQUEST_BODY_TIMEOUT_S and MAX_BUFFERED_REQUEST_BYTES on every request body."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, budget_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        # This process's requests together: the app (and so this middleware) is built once per process.
        self.budget = BodyBudget(budget_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked, waits_to_send = _body_headers(scope)
        if not chunked and declared == 0:
            await self.app(scope, receive, send)  # no body (a GET, or Content-Length: 0): nothing to bound
            return
        if declared is not None and declared > self.max_bytes:
            await _refuse(send, f"request body is {declared} bytes; at most {self.max_bytes} are accepted")
            return
        reader = BodyReader(receive, self.budget, declared=declared, max_bytes=self.max_bytes, timeout_s=self.timeout_s)
        scope.setdefault("state", {})[STATE_KEY] = reader

        async def send_when_read(message: Message) -> None:
            if message["type"] == "http.response.start" and not await reader.settle(waits_to_send):
                MutableHeaders(scope=message)["connection"] = "close"
            await send(message)

        try:
            await self.app(scope, reader.receive, send_when_read)
        finally:
            reader.release()


async def _refuse(send: Send, message: str) -> None:
    payload = orjson.dumps(error_body(ErrorCode.REQUEST_TOO_LARGE, message))
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _body_headers(scope: Scope) -> tuple[int | None, bool, bool]:
    """Return the declared Content-Length (0 without one, None when it is not a number), whether a
    Transfer-Encoding frames the body, and whether the caller waits for "100 Continue" before sending it."""
    declared: int | None = 0
    chunked = waits = False
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = None
        elif key == b"transfer-encoding":
            chunked = True
        elif key == b"expect":
            waits = bytes(value).strip().lower() == b"100-continue"
    return declared, chunked, waits
