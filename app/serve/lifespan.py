"""Hand the lifespan's state to every request, as uvicorn does and Ray Serve's replicas do not.

The app's lifespan yields `{"services": ...}`; an ASGI server keeps that mapping and gives each request a
shallow copy as `scope["state"]` (`request.state`). A Serve replica runs the lifespan (uvicorn's LifespanOn)
but passes the proxy's request scopes through without that key, so the routes would find no services.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send


class LifespanStateMiddleware:
    """Remember the lifespan scope's state; give every other scope a shallow copy of it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.state = scope.setdefault("state", self.state)
        else:
            scope["state"] = {**self.state, **scope.get("state", {})}
        await self.app(scope, receive, send)
