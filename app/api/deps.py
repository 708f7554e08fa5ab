"""Typed dependencies: the app's services and the caller's signature headers.

All are `async def` though none awaits: FastAPI runs a plain `def` dependency on its thread pool,
a thread hop per dependency per request that costs more than the work itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Request

from app.api.body import M, auth_headers, parse_body
from app.api.observe import RequestRecord
from app.auth.verify import UNSIGNED, AuthHeaders, RequestVerifier
from app.errors import Unavailable
from app.inference.model import ModelInfo
from app.pipeline import EmbeddingPipeline
from app.services import Services


async def get_services(request: Request) -> Services:
    return cast(Services, request.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]


class Signed:
    """The request's signature headers plus what is needed to check them against the payload."""

    def __init__(self, verifier: RequestVerifier, request: Request, headers: AuthHeaders) -> None:
        self._verifier = verifier
        self._method = request.method
        # Sign over the path exactly as it arrived, not a normalised one.
        raw = request.scope.get("raw_path")
        self._path = raw.decode("latin-1") if raw else request.url.path
        self._headers = headers
        self.key_id = UNSIGNED

    async def verify(self, payload_id: str) -> None:
        """Raise Unauthorized unless the signature covers this payload; note which key signed it."""
        self.key_id = await self._verifier.verify(self._method, self._path, payload_id, self._headers)


@dataclass(slots=True)
class EmbedCall:
    """What an embedding endpoint works with: services, the ready pipeline, the signature, the log record."""

    services: Services
    pipeline: EmbeddingPipeline
    info: ModelInfo
    signed: Signed
    record: RequestRecord
    request: Request

    async def charge(self, items: int) -> None:
        """Spend `items` of the signing key's rate limit: 429 rate_limited when it is spent (RATE_LIMIT_ITEMS_PER_S)."""
        limiter = self.services.rate_limiter
        if limiter is not None:
            await limiter.acquire(self.signed.key_id, items)

    async def body(self, model: type[M]) -> M:
        """Return the request's JSON body validated as `model` (422 through RequestValidationError)."""
        return await parse_body(self.request, model)


async def get_embed_call(request: Request) -> EmbedCall:
    """Refuse missing or stale signature headers, then a service not ready, before the body is validated."""
    # One dependency rather than four, headers read here (see app.api.body): FastAPI's resolution of
    # each parameter costs more than what it returns.
    services = cast(Services, request.state.services)
    headers = auth_headers(request)
    services.verifier.precheck(headers)
    ready = services.ready()
    if ready is None:
        raise Unavailable(f"service not ready: {services.reason or services.status.value}")
    record = cast(RequestRecord, request.state.record)
    return EmbedCall(services, ready[0], ready[1], Signed(services.verifier, request, headers), record, request)


EmbedCallDep = Annotated[EmbedCall, Depends(get_embed_call)]
