"""The exceptions every client method raises; each has a stable `code` (as in the service's errors).

ClipClientError                 base of everything below
├── ClipConfigError             config_error      missing or invalid configuration (environment)
├── ClipNotSupportedError       not_supported     the method does not exist on this backend
├── ClipRequestError            (server's code)   the server refused this request; never retried
│   ├── ClipAuthError           unauthorized      bad signature, wrong secret, stale clock, bad API key
│   ├── ClipInvalidRequestError invalid_request   422/413/other 4xx: bad URL, bad image, too large ...
│   └── ClipImageFetchError     download_failed   the service could not fetch the image (its JSON 502/504)
├── ClipServerError             server_error      500, an unexpected status, or an answer that is not ours
└── ClipUnavailableError        unavailable       still failing after every retry (connection, 429, 502-504)
    └── ClipTimeoutError        timeout           ... and the last attempt timed out

`ClipRequestError.status` is the HTTP status (None when the error came inside a 200, as from the
serverless handler); `ClipUnavailableError.attempts` says how many attempts were made.
"""

from __future__ import annotations


class ClipClientError(Exception):
    """Base of every error the client raises."""

    code = "client_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ClipConfigError(ClipClientError):
    code = "config_error"


class ClipNotSupportedError(ClipClientError):
    code = "not_supported"


class ClipRequestError(ClipClientError):
    """The server answered and said no; retrying the same request would not help."""

    code = "request_refused"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status


class ClipAuthError(ClipRequestError):
    code = "unauthorized"


class ClipInvalidRequestError(ClipRequestError):
    code = "invalid_request"


class ClipImageFetchError(ClipRequestError):
    code = "download_failed"


class ClipServerError(ClipClientError):
    code = "server_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status


class ClipUnavailableError(ClipClientError):
    """Every attempt failed with a retryable outcome."""

    code = "unavailable"

    def __init__(self, message: str, *, attempts: int, status: int | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status


class ClipTimeoutError(ClipUnavailableError):
    code = "timeout"


# Service error codes that mean "the image host failed", not "the service is unavailable".
IMAGE_FETCH_CODES = frozenset({"download_failed", "download_timeout"})


def error_for(code: str, message: str, status: int | None) -> ClipClientError:
    """Map a refusal (HTTP status and/or the service's error code) to its exception."""
    if status == 401 or status == 403 or code == "unauthorized":
        return ClipAuthError(message, code="unauthorized", status=status)
    if code in IMAGE_FETCH_CODES:
        return ClipImageFetchError(message, code=code, status=status)
    if status is not None and 400 <= status < 500:
        return ClipInvalidRequestError(message, code=code or "invalid_request", status=status)
    if status is None and code.startswith(("invalid_", "url_", "image_", "request_")):
        return ClipInvalidRequestError(message, code=code, status=None)
    return ClipServerError(message, code=code or "server_error", status=status)
