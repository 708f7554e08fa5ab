"""Read the image parts of a `multipart/form-data` upload (`POST /v1/embed/image-upload`).

Starlette's parser (python-multipart underneath) does the parsing, with its limits set from ours:
at most MAX_BATCH_SIZE file parts (`max_files`), and non-file fields, which are refused anyway, cut
short at `_FIELD_BYTES` (`max_part_size`, which bounds fields only). The options every endpoint takes
(`model`, `embedding_type`, `dimensions`) are query parameters here: a form has no field for them. A file part has no size limit
of its own there: it is spooled (in memory up to 1 MiB, then to a temporary file), and the body it
comes from is already bounded by MAX_REQUEST_BYTES (app.api.limits); a part over
MAX_IMAGE_SIZE_BYTES fails alone, as an oversized download does in a batch.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from app.errors import InvalidRequest
from app.schemas import OutputOptions

MEDIA_TYPE = "multipart/form-data"
# Long enough for Starlette to name the field in its refusal; no field is accepted anyway.
_FIELD_BYTES = 1024
_HOW = "send each image as a file part, e.g. curl -F image=@cat.jpg"


def upload_options(request: Request) -> OutputOptions:
    """Return the options of the query string (`?model=…&embedding_type=…`); a 422 as a body's for bad ones."""
    try:
        return OutputOptions.model_validate(dict(request.query_params))
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in errors]) from None


async def read_image_parts(request: Request, max_parts: int) -> list[bytes]:
    """Return the bytes of every file part, in the order sent; raise InvalidRequest for a body that is not one."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != MEDIA_TYPE:
        raise InvalidRequest(f"Content-Type must be {MEDIA_TYPE}: {_HOW}")
    try:
        async with request.form(max_files=max_parts, max_fields=max_parts, max_part_size=_FIELD_BYTES) as form:
            parts: list[bytes] = []
            for name, value in form.multi_items():
                if not isinstance(value, UploadFile):
                    raise InvalidRequest(f"part {name[:40]!r} is a form field, not a file: {_HOW}")
                parts.append(await value.read())
    except HTTPException as exc:  # Starlette's refusal of a malformed body, or of one over the limits above
        raise InvalidRequest(f"multipart body refused: {exc.detail}") from None
    except ClientDisconnect:
        raise InvalidRequest("the request body ended early: the client went away") from None
    if not parts:
        raise InvalidRequest(f"the upload holds no image part: {_HOW}")
    return parts
