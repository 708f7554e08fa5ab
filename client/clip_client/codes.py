"""The stable error codes of `{"error": {"code", "message"}}`, shared by the service and its clients.

The service raises and answers with them (`app.errors`, `app.api.errors`); the client maps them to
its exceptions (`clip_client.errors`). Defined once here, as the signing scheme is, so the two sides
cannot drift. A `StrEnum`: each member is its own string, in JSON and in comparisons.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Every code the service answers with, then the client's own."""

    # The service's (app.errors, app.api.errors, app.api.limits).
    INTERNAL_ERROR = "internal_error"
    UNAUTHORIZED = "unauthorized"  # the legacy job's one refusal; the client's for a 401/403 without a code
    # Which authentication check failed (all 401): app.auth.verify.
    MISSING_AUTH_HEADERS = "missing_auth_headers"
    MALFORMED_AUTH_HEADERS = "malformed_auth_headers"
    TIMESTAMP_OUT_OF_WINDOW = "timestamp_out_of_window"
    SIGNATURE_MISMATCH = "signature_mismatch"
    NONCE_REUSED = "nonce_reused"
    API_KEY_INVALID = "api_key_invalid"
    INVALID_REQUEST = "invalid_request"
    INVALID_URL = "invalid_url"
    URL_NOT_ALLOWED = "url_not_allowed"
    DOWNLOAD_FAILED = "download_failed"
    DOWNLOAD_TIMEOUT = "download_timeout"
    IMAGE_TOO_LARGE = "image_too_large"
    INVALID_IMAGE = "invalid_image"
    REQUEST_TOO_LARGE = "request_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    MODEL_LOADING = "model_loading"  # the model asked for is loading (at start, on first use, after an idle unload)
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    HTTP_ERROR = "http_error"
    # The client's own (clip_client.errors, clip_client.serverless).
    CLIENT_ERROR = "client_error"
    CONFIG_ERROR = "config_error"
    NOT_SUPPORTED = "not_supported"
    REQUEST_REFUSED = "request_refused"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    HANDLER_EXCEPTION = "handler_exception"
    READ_FAILED = "read_failed"  # `embed-list`: a local file could not be read


# Authentication failed (401): the request, as signed, will never be accepted; fix it and sign it again.
AUTH_CODES = frozenset(
    {
        ErrorCode.UNAUTHORIZED,
        ErrorCode.MISSING_AUTH_HEADERS,
        ErrorCode.MALFORMED_AUTH_HEADERS,
        ErrorCode.TIMESTAMP_OUT_OF_WINDOW,
        ErrorCode.SIGNATURE_MISMATCH,
        ErrorCode.NONCE_REUSED,
        ErrorCode.API_KEY_INVALID,
    }
)
# The image host failed, not the service: a final answer for this image, never retried as a sick server.
IMAGE_FETCH_CODES = frozenset({ErrorCode.DOWNLOAD_FAILED, ErrorCode.DOWNLOAD_TIMEOUT})
# This request (its URL, image or body) is refused: sending it again cannot succeed.
REQUEST_REFUSED_CODES = frozenset(
    {
        ErrorCode.INVALID_REQUEST,
        ErrorCode.INVALID_URL,
        ErrorCode.URL_NOT_ALLOWED,
        ErrorCode.IMAGE_TOO_LARGE,
        ErrorCode.INVALID_IMAGE,
        ErrorCode.REQUEST_TOO_LARGE,
    }
)
