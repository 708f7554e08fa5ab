"""Batches beside the image batch: texts (`/v1/embed/text-batch`) and uploaded images (`/v1/embed/image-upload`).

Both answer as `/v1/embed/image-batch` does: one result per item in input order, a bad item failing
alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from clip_client.signing import (
    TEXT_BATCH_PATH,
    UPLOAD_PATH,
    options_payload_id,
    text_batch_payload_id,
    upload_payload_id,
)
from fastapi import APIRouter
from fastapi.responses import Response

from app.api.answers import ERRORS, ItemOutcome, batch_response, check_batch_size, text_error
from app.api.body import signed_json_operation, signed_upload_operation
from app.api.deps import EmbedCallDep
from app.api.upload import read_image_parts, upload_options
from app.errors import ImageTooLarge, ServiceError
from app.pipeline import ItemResult
from app.schemas import BatchResponse, EmbedTextBatchRequest

router = APIRouter()
T = TypeVar("T")


@router.post(
    TEXT_BATCH_PATH,
    response_model=BatchResponse,
    responses=ERRORS,
    openapi_extra=signed_json_operation(EmbedTextBatchRequest),
)
async def embed_text_batch(call: EmbedCallDep) -> Response:
    body = await call.body(EmbedTextBatchRequest)
    call.record.items = len(body.texts)
    call.verify(options_payload_id(text_batch_payload_id(body.texts), body.signed_options()))
    call.use(body.model, "text", body.output())
    settings = call.services.settings
    check_batch_size("texts", "texts", len(body.texts), settings.max_batch_size)
    await call.admit(len(body.texts))
    items = [text_error(text, settings.max_text_chars) or text for text in body.texts]
    return batch_response(await run_items(items, call.pipeline.embed_texts), call.info, call.record, call.output)


@router.post(UPLOAD_PATH, response_model=BatchResponse, responses=ERRORS, openapi_extra=signed_upload_operation())
async def embed_image_upload(call: EmbedCallDep) -> Response:
    settings = call.services.settings
    options = upload_options(call.request)
    parts = await read_image_parts(call.request, settings.max_batch_size)
    call.record.items = len(parts)
    call.verify(options_payload_id(upload_payload_id(parts), options.signed_options()))
    call.use(options.model, "image", options.output())
    await call.admit(len(parts))
    limit = settings.max_image_size_bytes
    items = [ImageTooLarge(f"image is {len(p)} bytes, over {limit}") if len(p) > limit else p for p in parts]
    return batch_response(await run_items(items, call.pipeline.embed_images), call.info, call.record, call.output)


async def run_items(
    items: Sequence[T | ServiceError], embed: Callable[[list[T]], Awaitable[list[ItemResult]]]
) -> list[ItemOutcome]:
    """Embed the items that passed their checks in one call; the others keep their error, in input order."""
    todo = [item for item in items if not isinstance(item, ServiceError)]
    done = iter(await embed(todo) if todo else [])
    return [item if isinstance(item, ServiceError) else next(done) for item in items]
