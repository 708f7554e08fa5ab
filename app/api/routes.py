"""The single-item endpoints, the image batch and /health; each validates its body, verifies the signature,
then calls the pipeline. The other batches are in app.api.batches, /v1/embeddings in app.api.openai.
"""

from __future__ import annotations

from clip_client.signing import batch_payload_id, image_payload_id, options_payload_id, text_payload_id
from fastapi import APIRouter
from fastapi.responses import Response

from app.api.answers import ERRORS, batch_response, check_batch_size, json_response, text_error, vector_response
from app.api.body import signed_json_operation
from app.api.deps import EmbedCallDep, ServicesDep
from app.api.errors import RETRY_AFTER_S
from app.api.models import model_health
from app.schemas import (
    BatchResponse,
    EmbeddingResponse,
    EmbedImageBatchRequest,
    EmbedImageRequest,
    EmbedTextBatchRequest,
    EmbedTextRequest,
    HealthResponse,
    OpenAIEmbeddingsRequest,
)
from app.services import Status

router = APIRouter()
STATE_DOWN_REASON = "the shared store (STATE_URL) is unreachable: signed requests with a nonce would get 503"
# The signed endpoints' bodies, listed in the OpenAPI document's components (app.api.body.with_request_schemas).
SIGNED_BODIES = (
    EmbedImageRequest,
    EmbedImageBatchRequest,
    EmbedTextRequest,
    EmbedTextBatchRequest,
    OpenAIEmbeddingsRequest,
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
    registry = services.registry
    configured = registry is not None and registry.configured
    if configured:
        body["models"] = {model.name: model_health(model) for model in services.served()}
    ready = services.ready() is not None
    if not ready:
        body["status"] = services.reported_status()
        body["reason"] = services.unready_reason()
        if configured and registry is not None and services.status in (Status.LOADING, Status.OK):
            body["reason"] = registry.why_not_ready() or body["reason"]
    if services.state is not None:
        services.state_up = await services.state.ping()
        body["shared_state"] = "ok" if services.state_up else "unreachable"
        if ready and not services.state_up:
            # Every signed request with a nonce would get 503: a readiness probe must send traffic elsewhere.
            ready = False
            body["status"] = "unavailable"
            body["reason"] = STATE_DOWN_REASON
    if services.pod is not None:
        pod = services.pod.summary()
        body["pod"] = pod.to_json()
        body["devices"] = pod.devices
        if ready and not pod.all_ready:
            # Workers starting with the pod accept at once (to answer 503 loading): ok only once all of them serve.
            ready = False
            body["status"] = "unavailable"
            body["reason"] = pod.missing()
    response = json_response(body, 200 if ready else 503)
    if not ready:
        response.headers["Retry-After"] = RETRY_AFTER_S
    return response


@router.post(
    "/v1/embed/image",
    response_model=EmbeddingResponse,
    responses=ERRORS,
    openapi_extra=signed_json_operation(EmbedImageRequest),
)
async def embed_image(call: EmbedCallDep) -> Response:
    body = await call.body(EmbedImageRequest)
    call.record.items = 1
    call.verify(options_payload_id(image_payload_id(body.image_url), body.signed_options()))
    call.use(body.model, "image", body.output())
    await call.admit(1)
    vector = await call.pipeline.embed_image(body.image_url)
    return vector_response(vector, call.info, call.output)


@router.post(
    "/v1/embed/image-batch",
    response_model=BatchResponse,
    responses=ERRORS,
    openapi_extra=signed_json_operation(EmbedImageBatchRequest),
)
async def embed_image_batch(call: EmbedCallDep) -> Response:
    body = await call.body(EmbedImageBatchRequest)
    call.record.items = len(body.image_urls)
    call.verify(options_payload_id(batch_payload_id(body.image_urls), body.signed_options()))
    call.use(body.model, "image", body.output())
    check_batch_size("image_urls", "URLs", len(body.image_urls), call.services.settings.max_batch_size)
    await call.admit(len(body.image_urls))
    outcomes = await call.pipeline.embed_images(body.image_urls)
    return batch_response(outcomes, call.info, call.record, call.output)


@router.post(
    "/v1/embed/text",
    response_model=EmbeddingResponse,
    responses=ERRORS,
    openapi_extra=signed_json_operation(EmbedTextRequest),
)
async def embed_text(call: EmbedCallDep) -> Response:
    body = await call.body(EmbedTextRequest)
    call.record.items = 1
    call.verify(options_payload_id(text_payload_id(body.text), body.signed_options()))
    call.use(body.model, "text", body.output())
    await call.admit(1)
    error = text_error(body.text, call.services.settings.max_text_chars)
    if error is not None:
        raise error
    vector = await call.pipeline.embed_text(body.text)
    return vector_response(vector, call.info, call.output)
