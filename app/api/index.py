"""`GET /`: where a newcomer who opens the service's address finds the docs, the probes and the metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.answers import json_response

router = APIRouter()


@router.get("/", summary="Links to the API docs, the probes and the metrics")
async def index(request: Request) -> Response:
    """Name the service and link its interactive docs, OpenAPI document, probes and metrics; no auth."""
    app = request.app
    # Behind a proxy that mounts the app under a prefix, the links carry it.
    root = request.scope.get("root_path", "").rstrip("/")
    links = {
        "docs": app.docs_url,
        "openapi": app.openapi_url,
        "health": "/health",
        "live": "/live",
        "metrics": "/metrics",
    }
    return json_response(
        {
            "service": app.title,
            "version": app.version,
            "links": {name: root + path for name, path in links.items() if path},
        }
    )
