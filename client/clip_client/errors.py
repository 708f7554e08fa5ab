"""The exceptions every client method raises; each has a stable `code` (`clip_client.codes.ErrorCode`).

ClipClientError                 base of everything below
├── ClipConfigError             config_error      missing or invalid configuration (environment)
├── ClipNotSupportedError       not_supported     the method does not exist on this backend
├── ClipRequestError            (server's code)   the server refused this request; never retried
│   ├── ClipAuthError           unauthorized      401/403; `code` says which check failed (codes.AUTH_CODES)
│   ├── ClipInvalidRequestError invalid_request   422/413/other 4xx: bad URL, bad image, too large ...
│   └── ClipImageFetchError     download_failed   the service could not fetch the image (its JSON 422/502/504)
├── ClipServerError             server_error      500, an unexpected status, or an answer that is not ours
└── ClipUnavailableError        unavailable       still failing after every retry (connection, 429, 502-504)
    └── ClipTimeoutError        timeout           ... and the last attempt timed out

`status` of ClipRequestError and ClipServerError is the HTTP status (None when the error came inside
a 200, as from the serverless handler), and `request_id` the id the server logged the request under
(the pod's X-Request-ID, the serverless job's id): the server's log line says why it refused.
`ClipUnavailableError.attempts` says how many attempts were made.
"""

from __future__ import annotations

from clip_client.codes import AUTH_CODES, IMAGE_FETCH_CODES, REQUEST_REFUSED_CODES, ErrorCode


class ClipClientError(Exception):
    """Base of every error the client raises."""

    code: str = ErrorCode.CLIENT_ERROR

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ClipConfigError(ClipClientError):
    code = ErrorCode.CONFIG_ERROR


class ClipNotSupportedError(ClipClientError):
    code = ErrorCode.NOT_SUPPORTED


class ClipRequestError(ClipClientError):
    """The server answered and said no; retrying the same request would not help."""

    code = ErrorCode.REQUEST_REFUSED

    def __init__(
        self, message: str, *, code: str | None = None, status: int | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.request_id = request_id


class ClipAuthError(ClipRequestError):
    code = ErrorCode.UNAUTHORIZED


class ClipInvalidRequestError(ClipRequestError):
    code = ErrorCode.INVALID_REQUEST


class ClipImageFetchError(ClipRequestError):
    code = ErrorCode.DOWNLOAD_FAILED


class ClipServerError(ClipClientError):
    code = ErrorCode.SERVER_ERROR

    def __init__(
        self, message: str, *, code: str | None = None, status: int | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.request_id = request_id


class ClipUnavailableError(ClipClientError):
    """Every attempt failed with a retryable outcome."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, message: str, *, attempts: int, status: int | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status


class ClipTimeoutError(ClipUnavailableError):
    code = ErrorCode.TIMEOUT


def error_for(code: str, message: str, status: int | None, request_id: str | None = None) -> ClipClientError:
    """Map a refusal (HTTP status and/or the service's error code) to its exception."""
    if status == 401 or status == 403 or code in AUTH_CODES:
        # The service's code says which check failed; a 401 from elsewhere (a proxy, RunPod) has none of ours.
        auth_code = code if code in AUTH_CODES else ErrorCode.UNAUTHORIZED
        return ClipAuthError(message, code=auth_code, status=status, request_id=request_id)
    if code in IMAGE_FETCH_CODES:
        return ClipImageFetchError(message, code=code, status=status, request_id=request_id)
    if status is not None and 400 <= status < 500:
        return ClipInvalidRequestError(
            message, code=code or ErrorCode.INVALID_REQUEST, status=status, request_id=request_id
        )
    if status is None and code in REQUEST_REFUSED_CODES:
        return ClipInvalidRequestError(message, code=code, status=None, request_id=request_id)
    return ClipServerError(message, code=code or ErrorCode.SERVER_ERROR, status=status, request_id=request_id)
