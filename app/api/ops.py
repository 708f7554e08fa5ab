"""Operator endpoints: /live (the process answers) and /metrics (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import ServicesDep
from app.ops.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/live")
async def live() -> Response:
    """Answer 200 whenever the process and its event loop respond; needs no model and no network."""
    return Response(b'{"status":"alive"}', media_type="application/json")


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    """Every counter, histogram and gauge of this process, in Prometheus text format."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)
