"""The one place that maps domain errors to HTTP statuses and the JSON error body."""

from __future__ import annotations

import logging
import math

import orjson
from clip_client.codes import ErrorCode
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import errors
from app.schemas import INVALID_URL_ERROR

log = logging.getLogger("app.api")

STATUS_BY_ERROR: dict[type[errors.ServiceError], int] = {
    errors.Unauthorized: 401,
    errors.InvalidRequest: 422,
    errors.InvalidUrl: 422,
    errors.UrlNotAllowed: 422,
    errors.InvalidImage: 422,
    errors.ImageTooLarge: 413,
    errors.RequestTooLarge: 413,
    errors.RequestTimeout: 408,
    errors.DownloadFailed: 502,
    errors.DownloadRefused: 422,
    errors.DownloadTimeout: 504,
    errors.Overloaded: 503,
    errors.RateLimited: 429,
    errors.Unavailable: 503,
    errors.NotFound: 404,
}
RETRY_AFTER_S = "1"
_HTTP_CODES = {
    400: ErrorCode.INVALID_REQUEST,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.REQUEST_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
}


def error_body(code: str, message: str, request_id: str | None = None) -> dict[str, dict[str, str]]:
    """Return the JSON error body every failure shares; a 401's also names the request id its log line carries."""
    error = {"code": code, "message": message}
    if request_id is not None:
        error["request_id"] = request_id
    return {"error": error}


def error_response(
    code: str, message: str, status: int, headers: dict[str, str] | None = None, request_id: str | None = None
) -> Response:
    return Response(
        orjson.dumps(error_body(code, message, request_id)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def status_for(exc: errors.ServiceError) -> int:
    """Return the HTTP status of a domain error."""
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def service_error_response(exc: errors.ServiceError, request_id: str | None = None) -> Response:
    """Return the answer to a domain error; `request_id` goes into the body of an authentication refusal."""
    status = status_for(exc)
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
    if isinstance(exc, (errors.RateLimited, errors.ModelLoading)):
        # Whole seconds, rounded up, at least one: when enough of the key's budget is back, or the model loaded.
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    # The refusal's details are in the log line under this id, which the caller may not see in the headers.
    logged_as = request_id if isinstance(exc, errors.Unauthorized) else None
    return error_response(exc.code, exc.message, status, headers, logged_as)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _note(request: Request, code: str) -> str | None:
    """Tell the request's log line and metrics which error code it answered with; return the request's id."""
    record = getattr(request.state, "record", None)
    if record is None:
        return None
    record.error_code = code
    return str(record.request_id)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every failure the same JSON shape."""

    @app.exception_handler(errors.ServiceError)
    async def _service(request: Request, exc: errors.ServiceError) -> Response:
        return service_error_response(exc, _note(request, exc.code))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        # A body whose only fault is its image URLs' characters (app.schemas.ImageUrl) is about the URLs.
        found = exc.errors()
        refused_urls = bool(found) and all(err.get("type") == INVALID_URL_ERROR for err in found)
        code = ErrorCode.INVALID_URL if refused_urls else ErrorCode.INVALID_REQUEST
        _note(request, code)
        return error_response(code, _describe_validation(exc), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.HTTP_ERROR)
        _note(request, code)
        return error_response(code, str(exc.detail), exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unknown(request: Request, exc: Exception) -> Response:
        _note(request, ErrorCode.INTERNAL_ERROR)
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(ErrorCode.INTERNAL_ERROR, "internal server error", 500)
