"""`POST /v1/embeddings`: OpenAI's embeddings API, so that its SDKs and the tools built on them work unchanged.

Texts by default; images (URLs or data URIs) with `"modality": "image"`, as Infinity names it. Unlike
the batch endpoints, one failing input fails the request, naming its index, as OpenAI does. `model`
picks the served model; `embedding_type` (an extra field) the vectors' type, sent as JSON numbers
(`encoding_format: float`) or as base64 of their bytes (docs/api.md#output-types).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from clip_client.signing import EMBEDDINGS_PATH, body_payload_id
from fastapi import APIRouter
from fastapi.responses import Response

from app.api.answers import ERRORS, check_batch_size, json_response, note_failed_items, text_error
from app.api.body import signed_json_operation, validate_json
from app.api.deps import OpenAICallDep
from app.api.observe import RequestRecord
from app.errors import InvalidRequest, ServiceError
from app.inference.outputs import OutputSpec, to_base64
from app.pipeline import EmbeddingPipeline, ItemResult
from app.schemas import OpenAIEmbeddingsRequest, OpenAIEmbeddingsResponse

router = APIRouter()


@router.post(
    EMBEDDINGS_PATH,
    response_model=OpenAIEmbeddingsResponse,
    responses=ERRORS,
    openapi_extra=signed_json_operation(OpenAIEmbeddingsRequest, api_key=True),
)
async def embeddings(call: OpenAICallDep) -> Response:
    raw = await call.raw_body()
    # Signed over the raw bytes: verified before they are parsed, so an unsigned body is never parsed.
    call.verify(body_payload_id(raw))
    body = validate_json(call.request, raw, OpenAIEmbeddingsRequest)
    del raw  # parsed: what is left of the request is `body`
    inputs = [body.input] if isinstance(body.input, str) else body.input
    call.record.items = len(inputs)
    settings = call.services.settings
    output = OutputSpec(body.embedding_type, body.dimensions)
    call.use(body.model, body.modality, output)
    if not inputs:
        raise InvalidRequest("input is empty: send a string or a list of 1 to MAX_BATCH_SIZE strings")
    check_batch_size("input", "items", len(inputs), settings.max_batch_size)
    await call.admit(len(inputs))
    if body.modality == "image":
        vectors = _all_or_nothing(await call.pipeline.embed_images(inputs), call.record)
        tokens = len(inputs)  # one per image (docs/api.md)
    else:
        vectors, tokens = await _embed_texts(call.pipeline, inputs, settings.max_text_chars, call.record)
    shaped = [output.apply(v) for v in vectors]
    if body.encoding_format == "base64":
        # As OpenAI does for float32 (little-endian); each other type as its own bytes.
        encoded: list[object] = [to_base64(v, output.embedding_type) for v in shaped]
    else:
        encoded = list(shaped)
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json_response({"object": "list", "data": data, "model": body.model, "usage": usage})


async def _embed_texts(
    pipeline: EmbeddingPipeline, texts: list[str], limit: int, record: RequestRecord
) -> tuple[list[np.ndarray], int]:
    """Return the texts' vectors and how many tokens they make; the first bad text fails them all."""
    for index, text in enumerate(texts):
        error = text_error(text, limit)
        if error is not None:
            raise _at(index, error)
    vectors = _all_or_nothing(await pipeline.embed_texts(texts), record)
    return vectors, sum(await pipeline.count_tokens(texts))


def _all_or_nothing(outcomes: Sequence[ItemResult], record: RequestRecord) -> list[np.ndarray]:
    """Return every vector, or raise the first item's error with its index.

    The raised error is counted as the request's; the other failed items are noted beside it.
    """
    failed = [(index, o) for index, o in enumerate(outcomes) if isinstance(o, ServiceError)]
    if failed:
        note_failed_items(record, [error for _, error in failed[1:]])
        raise _at(*failed[0])
    return [outcome for outcome in outcomes if isinstance(outcome, np.ndarray)]


def _at(index: int, error: ServiceError) -> ServiceError:
    """Return the same error (code and status), its message naming the input it is about."""
    return type(error)(f"input[{index}]: {error.message}")
