"""The four endpoints; each validates its body, verifies the signature, then calls the pipeline."""

from __future__ import annotations

import numpy as np
import orjson
from clip_client.signing import batch_payload_id, image_payload_id, text_payload_id
from fastapi import APIRouter
from fastapi.responses import Response

from app.api.body import signed_json_operation
from app.api.deps import EmbedCallDep, ServicesDep
from app.api.errors import RETRY_AFTER_S, error_body
from app.errors import InvalidRequest, ServiceError
from app.schemas import (
    BatchResponse,
    EmbeddingResponse,
    EmbedImageBatchRequest,
    EmbedImageRequest,
    EmbedTextRequest,
    ErrorResponse,
    HealthResponse,
)

router = APIRouter()
# The signed endpoints' bodies, listed in the OpenAPI document's components (app.api.body.with_request_schemas).
SIGNED_BODIES = (EmbedImageRequest, EmbedImageBatchRequest, EmbedTextRequest)
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 413, 422, 502, 503, 504)
}


def json_response(content: object, status_code: int = 200) -> Response:
    """Serialise with orjson; numpy float32 vectors go out without a Python-float detour."""
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status_code, media_type="application/json"
    )


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(services: ServicesDep) -> Response:
    s = services.settings
    body: dict[str, object] = {
        "status": services.status.value,
        "max_batch_size": s.max_batch_size,
        "auth": "insecure" if s.allow_insecure_auth else "hmac",
    }
    if services.info is not None:
        info = services.info
        body |= {
            "model": info.model,
            "pretrained": info.pretrained,
            "device": info.device,
            "dtype": info.dtype,
            "kernels": info.kernels,
            "dim": info.dim,
            "random_weights": info.pretrained == "none",
        }
    if services.engine is not None:
        body["engine"] = services.engine.snapshot()
    ready = services.ready() is not None
    if not ready:
        body["status"] = services.reported_status()
        body["reason"] = services.reason or "engine stopped"
    if services.state is not None:
        services.state_up = await services.state.ping()
        # Reported, not a reason for 503: requests that need the store fail on their own (503).
        body["shared_state"] = "ok" if services.state_up else "unreachable"
    if services.pod is not None:
        pod = services.pod.summary()
        body["pod"] = pod.to_json()
        body["devices"] = pod.devices
        if ready and not pod.all_ready:
            # A request must never land on a worker still loading while /health says ok.
            ready = False
            body["status"] = "unavailable"
            body["reason"] = f"{pod.ready} of {pod.expected} workers ready"
    response = json_response(body, 200 if ready else 503)
    if not ready:
        response.headers["Retry-After"] = RETRY_AFTER_S
    return response


@router.post(
    "/v1/embed/image",
    response_model=EmbeddingResponse,
    responses=_ERRORS,
    openapi_extra=signed_json_operation(EmbedImageRequest),
)
async def embed_image(call: EmbedCallDep) -> Response:
    body = await call.body(EmbedImageRequest)
    call.record.items = 1
    call.verify(image_payload_id(body.image_url))
    await call.admit(1)
    vector = await call.pipeline.embed_image(body.image_url)
    return json_response({"embedding": vector, "dim": call.info.dim, "model": call.info.model})


@router.post(
    "/v1/embed/image-batch",
    response_model=BatchResponse,
    responses=_ERRORS,
    openapi_extra=signed_json_operation(EmbedImageBatchRequest),
)
async def embed_image_batch(call: EmbedCallDep) -> Response:
    body = await call.body(EmbedImageBatchRequest)
    call.record.items = len(body.image_urls)
    call.verify(batch_payload_id(body.image_urls))
    limit = call.services.settings.max_batch_size
    if len(body.image_urls) > limit:
        raise InvalidRequest(
            f"image_urls holds {len(body.image_urls)} URLs; at most MAX_BATCH_SIZE={limit} are accepted per request"
        )
    await call.admit(len(body.image_urls))
    info = call.info
    outcomes = await call.pipeline.embed_images(body.image_urls)
    results = [_batch_item(i, outcome) for i, outcome in enumerate(outcomes)]
    succeeded = sum(1 for r in results if r["error"] is None)
    return json_response(
        {
            "results": results,
            "succeeded": succeeded,
            "failed": len(results) - succeeded,
            "dim": info.dim,
            "model": info.model,
        }
    )


def _batch_item(index: int, outcome: np.ndarray | ServiceError) -> dict[str, object]:
    if isinstance(outcome, ServiceError):
        return {"index": index, "embedding": None, "error": error_body(outcome.code, outcome.message)["error"]}
    return {"index": index, "embedding": outcome, "error": None}


@router.post(
    "/v1/embed/text",
    response_model=EmbeddingResponse,
    responses=_ERRORS,
    openapi_extra=signed_json_operation(EmbedTextRequest),
)
async def embed_text(call: EmbedCallDep) -> Response:
    body = await call.body(EmbedTextRequest)
    call.record.items = 1
    call.verify(text_payload_id(body.text))
    await call.admit(1)
    limit = call.services.settings.max_text_chars
    if len(body.text) > limit:
        raise InvalidRequest(f"text is {len(body.text)} characters; at most {limit} are accepted")
    if not body.text.strip():
        raise InvalidRequest("text is blank")
    vector = await call.pipeline.embed_text(body.text)
    return json_response({"embedding": vector, "dim": call.info.dim, "model": call.info.model})
