"""Domain errors: the one hierarchy every core module raises.

ServiceError                 base; `code` is the stable machine-readable name in the JSON body
├── Unauthorized             unauthorized     any refusal of the legacy job's signature; base of:
│   ├── MissingAuthHeaders     missing_auth_headers    no X-Timestamp/X-Signature (or X-Nonce when required)
│   ├── MalformedAuthHeaders   malformed_auth_headers  a header that cannot be what the scheme sends
│   ├── TimestampOutOfWindow   timestamp_out_of_window X-Timestamp further than AUTH_MAX_SKEW_S from the clock
│   ├── SignatureMismatch      signature_mismatch      no configured secret signs this request
│   ├── NonceReused            nonce_reused            a request with this X-Nonce was already accepted
│   └── ApiKeyInvalid          api_key_invalid         a bearer key that is not one of API_KEYS
├── InvalidRequest           invalid_request  a request the schema accepts but the service cannot
├── InvalidUrl               invalid_url      not http(s), malformed, credentials, bad port
├── UrlNotAllowed            url_not_allowed  resolves to a non-public address or unlisted host
├── DownloadFailed           download_failed  connection error or non-2xx answer
│   └── DownloadRefused      download_failed  the image server answered 4xx: the URL is the caller's to fix
├── DownloadTimeout          download_timeout the download outlived its budget
├── ImageTooLarge            image_too_large  too many bytes or too many pixels
├── InvalidImage             invalid_image    not a decodable image of an allowed format
├── RequestTooLarge          request_too_large the HTTP body is over the limit
├── RequestTimeout           request_timeout  the HTTP body did not arrive within REQUEST_BODY_TIMEOUT_S
├── Overloaded               overloaded       no room in the queue, or out of accelerator memory
├── RateLimited              rate_limited     the signing key spent its RATE_LIMIT_ITEMS_PER_S budget
├── NotFound                 not_found        GET /v1/models/{id} names no served model
└── Unavailable              unavailable      loading, draining, engine stopped, or the shared store unreachable
    └── ModelLoading         model_loading    the model asked for is loading (at start, first use, after an idle unload)

The codes are `clip_client.codes.ErrorCode` members, shared with the client that maps them.
Only `app.api.errors` turns these into HTTP status codes.
"""

from __future__ import annotations

from clip_client.codes import ErrorCode


class ServiceError(Exception):
    """Base of every error the service reports to a caller."""

    code: str = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(ServiceError):
    code = ErrorCode.UNAUTHORIZED


class MissingAuthHeaders(Unauthorized):
    code = ErrorCode.MISSING_AUTH_HEADERS


class MalformedAuthHeaders(Unauthorized):
    code = ErrorCode.MALFORMED_AUTH_HEADERS


class TimestampOutOfWindow(Unauthorized):
    code = ErrorCode.TIMESTAMP_OUT_OF_WINDOW


class SignatureMismatch(Unauthorized):
    code = ErrorCode.SIGNATURE_MISMATCH


class NonceReused(Unauthorized):
    code = ErrorCode.NONCE_REUSED


class ApiKeyInvalid(Unauthorized):
    code = ErrorCode.API_KEY_INVALID


class InvalidRequest(ServiceError):
    code = ErrorCode.INVALID_REQUEST


class InvalidUrl(ServiceError):
    code = ErrorCode.INVALID_URL


class UrlNotAllowed(ServiceError):
    code = ErrorCode.URL_NOT_ALLOWED


class DownloadFailed(ServiceError):
    code = ErrorCode.DOWNLOAD_FAILED


class DownloadRefused(DownloadFailed):
    """The image server refused the URL (404, 403...): retrying cannot help, so it is not answered as a gateway fault."""


class DownloadTimeout(ServiceError):
    code = ErrorCode.DOWNLOAD_TIMEOUT


class ImageTooLarge(ServiceError):
    code = ErrorCode.IMAGE_TOO_LARGE


class InvalidImage(ServiceError):
    code = ErrorCode.INVALID_IMAGE


class RequestTooLarge(ServiceError):
    code = ErrorCode.REQUEST_TOO_LARGE


class RequestTimeout(ServiceError):
    code = ErrorCode.REQUEST_TIMEOUT


class Overloaded(ServiceError):
    code = ErrorCode.OVERLOADED


class RateLimited(ServiceError):
    """The signing key has spent its budget; `retry_after_s` says when enough items are back."""

    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ServiceError):
    code = ErrorCode.UNAVAILABLE


class ModelLoading(Unavailable):
    """The model a request names is loading; `retry_after_s` is how long its last load took (at least 1 s)."""

    code = ErrorCode.MODEL_LOADING

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotFound(ServiceError):
    code = ErrorCode.NOT_FOUND
