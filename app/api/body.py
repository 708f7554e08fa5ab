"""Request bodies and signature headers read by the endpoints themselves, with their OpenAPI entries.

FastAPI's own body and `Header()` parameters re-inspect their type annotations on every request,
a measurable share of what the HTTP layer costs (docs/performance.md). pydantic validates the raw
bytes in one call instead; the errors still go through the one
`RequestValidationError` handler, so the 422 answers keep their shape.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from app.api.observe import RequestRecord
from app.api.reading import STATE_KEY, BodyReader, parse_cost
from app.auth.verify import AuthHeaders
from app.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)

_REF = "#/components/schemas/{model}"
_SIGNATURE_HEADERS = (
    ("X-Timestamp", "Unix seconds when the request was signed."),
    ("X-Signature", "Hex HMAC-SHA256 of the request (see the README, Security)."),
    ("X-Nonce", "Optional (required when REQUIRE_NONCE=1): 16-64 characters of A-Za-z0-9_-, used once."),
)

_BEARER = "`Bearer <key>`, a key of API_KEYS: instead of the signature headers (this endpoint only)."
_PARTS = "1 to MAX_BATCH_SIZE image files (JPEG, PNG, WebP, GIF); any part name, each part a file"


def auth_headers(request: Request) -> AuthHeaders:
    """Return the request's signature headers (None where absent) and its id, which a refusal's log line carries."""
    h = request.headers
    record = getattr(request.state, "record", None)
    return AuthHeaders(
        timestamp=h.get("x-timestamp"),
        signature=h.get("x-signature"),
        nonce=h.get("x-nonce"),
        request_id=record.request_id if isinstance(record, RequestRecord) else None,
    )


async def read_json_body(request: Request) -> bytes:
    """Return the raw JSON body, read once into one buffer; refuse another Content-Type (InvalidRequest).

    Not Starlette's `request.body()`, which joins a list of the chunks: for a moment that holds the
    body twice. A BytesIO grows in place and hands its buffer over without a copy.
    """
    # As FastAPI's strict content type: a form post from a browser page is not taken for JSON.
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise InvalidRequest("Content-Type must be application/json")
    buffer = io.BytesIO()
    try:
        async for chunk in request.stream():
            buffer.write(chunk)
    except ClientDisconnect:
        raise InvalidRequest("the request body ended early: the client went away") from None
    return buffer.getvalue()


def validate_json(request: Request, raw: bytes, model: type[M]) -> M:
    """Validate the JSON body `raw` against `model`; raise RequestValidationError as FastAPI would.

    What parsing may take is charged to the request first (app.api.reading: 503 when it does not fit now).
    """
    reader = getattr(request.state, STATE_KEY, None)
    if isinstance(reader, BodyReader):
        reader.charge(parse_cost(raw))
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        # Without the body: the error outlives this call, the body need not.
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


async def parse_body(request: Request, model: type[M]) -> M:
    """Read the JSON body and validate it against `model`; the raw bytes are dropped once it is parsed."""
    return validate_json(request, await read_json_body(request), model)


def signed_json_operation(model: type[BaseModel], *, api_key: bool = False) -> dict[str, object]:
    """Return the OpenAPI entries of a signed endpoint whose JSON body is `model` (see with_request_schemas).

    With `api_key`, the endpoint also takes `Authorization: Bearer <key>` (API_KEYS) instead of a signature.
    """
    operation = _signed_operation({"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}})
    if api_key:
        header = {"name": "Authorization", "in": "header", "required": False, "schema": {"type": "string"}}
        operation["parameters"].append(header | {"description": _BEARER})
    return operation


def signed_upload_operation() -> dict[str, object]:
    """Return the OpenAPI entries of the signed multipart upload: one or more image file parts."""
    files = {"type": "array", "items": {"type": "string", "format": "binary"}, "description": _PARTS}
    schema = {"type": "object", "properties": {"image": files}, "required": ["image"]}
    return _signed_operation({"multipart/form-data": {"schema": schema}})


def _signed_operation(content: dict[str, object]) -> dict[str, Any]:
    return {
        "parameters": [
            {"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": text}
            for name, text in _SIGNATURE_HEADERS
        ],
        "requestBody": {"required": True, "content": content},
    }


def with_request_schemas(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Make the app's OpenAPI document list `models` under components/schemas, where their $refs point.

    FastAPI lists only the models of the parameters it parses itself; these bodies are parsed by the
    endpoints (see above), so a generated client would otherwise find no named type for them.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()  # FastAPI keeps it as app.openapi_schema
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            schema = model.model_json_schema(ref_template=_REF)
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document
