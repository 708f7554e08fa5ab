"""Typed dependencies: the app's services and the caller's signature headers.

All are `async def` though none awaits: FastAPI runs a plain `def` dependency on its thread pool,
a thread hop per dependency per request that costs more than the work itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Request

from app.api.body import M, auth_headers, parse_body, read_json_body
from app.api.observe import RequestRecord
from app.auth.apikeys import bearer_token
from app.auth.verify import AuthHeaders, Verified
from app.errors import Unavailable
from app.inference.model import ModelInfo
from app.inference.outputs import AS_IS, OutputSpec
from app.pipeline import EmbeddingPipeline
from app.services import Services, Status


async def get_services(request: Request) -> Services:
    return cast(Services, request.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]


@dataclass(slots=True)
class EmbedCall:
    """What an embedding endpoint works with: services, the log record, the model the request names and what it
    asks of it (`use`), and that model's pipeline once the request is verified (`verify`) and admitted (`admit`)."""

    services: Services
    record: RequestRecord
    request: Request
    headers: AuthHeaders
    _verified: Verified | None = None
    _admitted: bool = False
    _by_api_key: Verified | None = None
    _pipeline: EmbeddingPipeline | None = None
    _info: ModelInfo | None = None
    output: OutputSpec = AS_IS

    def verify(self, payload_id: str) -> None:
        """Raise Unauthorized unless the signature covers this payload (no store call yet).

        A request that an API key let in (`/v1/embeddings`) has no signature to check: its key stands.
        """
        if self._by_api_key is not None:
            self._verified = self._by_api_key
            return
        # Sign over the path exactly as it arrived, not a normalised one.
        raw = self.request.scope.get("raw_path")
        path = raw.decode("latin-1") if raw else self.request.url.path
        self._verified = self.services.verifier.check(self.request.method, path, payload_id, self.headers)

    def use(self, model: str | None, modality: str, output: OutputSpec | None = None) -> None:
        """Take the model the request names (None: the default) to embed `modality`, and check what it asks of it.

        Raise InvalidRequest (unknown model, a tower it lacks, `dimensions` it cannot give), ModelLoading or
        Unavailable (app.inference.registry.ModelRegistry.use).
        """
        if self.services.registry is None:
            raise Unavailable("service not ready: no model yet")
        self._pipeline, self._info = self.services.registry.use(model, modality)
        if output is not None:
            output.check(self._info.served_name, self._info.dim, self._info.matryoshka_dims)
            self.output = output

    @property
    def info(self) -> ModelInfo:
        """Return the info of the model in use."""
        if self._info is None:
            raise RuntimeError("the model was asked for before use()")
        return self._info

    async def admit(self, items: int) -> None:
        """Refuse a replayed nonce (401) and spend `items` of the key's rate limit (429 when spent), in one store call."""
        if self._verified is None:
            raise RuntimeError("admit() before verify(): the signature was never checked")
        await self.services.verifier.admit(self._verified, items)
        self._admitted = True

    @property
    def pipeline(self) -> EmbeddingPipeline:
        """Return the pipeline; only an admitted request reaches it."""
        if not self._admitted or self._pipeline is None:
            raise RuntimeError("the pipeline was reached before verify(), use() and admit()")
        return self._pipeline

    async def body(self, model: type[M]) -> M:
        """Return the request's JSON body validated as `model` (422 through RequestValidationError)."""
        return await parse_body(self.request, model)

    async def raw_body(self) -> bytes:
        """Return the request's JSON body as sent, not yet validated (`app.api.body.validate_json`)."""
        return await read_json_body(self.request)


async def get_embed_call(request: Request) -> EmbedCall:
    """Refuse missing, malformed or stale signature headers, then a service not ready, before the body is read."""
    return _signed_call(request, api_key_accepted=False)


def _signed_call(request: Request, *, api_key_accepted: bool) -> EmbedCall:
    # One dependency rather than four, headers read here (see app.api.body): FastAPI's resolution of
    # each parameter costs more than what it returns.
    services = cast(Services, request.state.services)
    headers = auth_headers(request)
    if headers.signature is None and bearer_token(request.headers.get("authorization")) is not None:
        services.verifier.refuse_api_key(headers.request_id)
    services.verifier.precheck(headers, api_key_accepted=api_key_accepted)
    return _ready_call(services, request, headers)


async def get_openai_call(request: Request) -> EmbedCall:
    """As `get_embed_call`, but an `Authorization: Bearer` API key may stand for the signature (API_KEYS)."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        return _signed_call(request, api_key_accepted=True)
    services = cast(Services, request.state.services)
    headers = auth_headers(request)
    by_key = services.verifier.check_api_key(token, headers.request_id)
    return _ready_call(services, request, headers, by_key)


def _ready_call(
    services: Services, request: Request, headers: AuthHeaders, by_key: Verified | None = None
) -> EmbedCall:
    # With MODELS, a loaded model serves while another still loads: use() answers for the one asked for.
    configured = services.registry is not None and services.registry.configured
    refused = services.status in (Status.DRAINING, Status.FAILED) if configured else services.ready() is None
    if refused:
        raise Unavailable(f"service not ready: {services.unready_reason()}")
    record = cast(RequestRecord, request.state.record)
    return EmbedCall(services, record, request, headers, _by_api_key=by_key)


EmbedCallDep = Annotated[EmbedCall, Depends(get_embed_call)]
OpenAICallDep = Annotated[EmbedCall, Depends(get_openai_call)]
