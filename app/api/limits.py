"""Refuse request bodies over MAX_REQUEST_BYTES before anything parses them (pure ASGI)."""

from __future__ import annotations

import orjson
from clip_client.codes import ErrorCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_body


class BodyLimitMiddleware:
    """Answer 413 `request_too_large` when Content-Length or the bytes actually received exceed the limit.

    The body is read here (it is at most `max_bytes`, and the JSON parser needs all of it anyway),
    then replayed to the app; chunked bodies without a Content-Length are counted as they arrive.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, f"request body is {declared} bytes; at most {self.max_bytes} are accepted")
            return
        body = bytearray()
        first: Message | None = None
        while first is None:
            message = await receive()
            if message["type"] != "http.request":
                first = message  # the client went away: let the app see it
                break
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(send, f"request body is over {self.max_bytes} bytes")
                return
            if not message.get("more_body", False):
                first = {"type": "http.request", "body": bytes(body), "more_body": False}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
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


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
