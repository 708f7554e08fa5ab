"""Domain errors: the one hierarchy every core module raises.

ServiceError                 base; `code` is the stable machine-readable name in the JSON body
├── Unauthorized             unauthorized     missing/invalid signature, stale timestamp
├── InvalidRequest           invalid_request  a request the schema accepts but the service cannot
├── InvalidUrl               invalid_url      not http(s), malformed, credentials, bad port
├── UrlNotAllowed            url_not_allowed  resolves to a non-public address or unlisted host
├── DownloadFailed           download_failed  connection error or non-2xx answer
├── DownloadTimeout          download_timeout the download outlived its budget
├── ImageTooLarge            image_too_large  too many bytes or too many pixels
├── InvalidImage             invalid_image    not a decodable image of an allowed format
├── RequestTooLarge          request_too_large the HTTP body is over the limit
├── Overloaded               overloaded       no room in the queue, or out of accelerator memory
└── Unavailable              unavailable      loading, draining or engine stopped

Only `app.api.errors` turns these into HTTP status codes.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service reports to a caller."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(ServiceError):
    code = "unauthorized"


class InvalidRequest(ServiceError):
    code = "invalid_request"


class InvalidUrl(ServiceError):
    code = "invalid_url"


class UrlNotAllowed(ServiceError):
    code = "url_not_allowed"


class DownloadFailed(ServiceError):
    code = "download_failed"


class DownloadTimeout(ServiceError):
    code = "download_timeout"


class ImageTooLarge(ServiceError):
    code = "image_too_large"


class InvalidImage(ServiceError):
    code = "invalid_image"


class RequestTooLarge(ServiceError):
    code = "request_too_large"


class Overloaded(ServiceError):
    code = "overloaded"


class Unavailable(ServiceError):
    code = "unavailable"
