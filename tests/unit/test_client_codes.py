"""The error codes shared by the service and the client, the client's mapping of them, and the CLI's 401 hint."""

from __future__ import annotations

import pytest
from clip_client import (
    ClipAuthError,
    ClipClientError,
    ClipImageFetchError,
    ClipInvalidRequestError,
    ClipServerError,
)
from clip_client.__main__ import AUTH_HINTS, error_document
from clip_client.codes import AUTH_CODES, ErrorCode
from clip_client.errors import error_for

from app import errors
from app.api.errors import _HTTP_CODES


def _service_errors() -> list[type[errors.ServiceError]]:
    found, todo = [], [errors.ServiceError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__ == "app.errors"]


@pytest.mark.parametrize("cls", _service_errors(), ids=lambda cls: cls.__name__)
def test_codes_every_service_error_code_is_shared(cls):
    assert isinstance(cls.code, ErrorCode)


def test_codes_every_http_error_code_is_shared():
    assert all(isinstance(code, ErrorCode) for code in _HTTP_CODES.values())


def test_codes_serialise_as_their_plain_names():
    assert (str(ErrorCode.UNAUTHORIZED), f"{ErrorCode.DOWNLOAD_FAILED}") == ("unauthorized", "download_failed")
    assert ErrorCode.INVALID_URL == "invalid_url"


@pytest.mark.parametrize(
    ("code", "status", "exc", "expected_code"),
    [
        ("unauthorized", 401, ClipAuthError, "unauthorized"),
        ("", 403, ClipAuthError, "unauthorized"),
        ("unauthorized", None, ClipAuthError, "unauthorized"),
        ("signature_mismatch", 401, ClipAuthError, "signature_mismatch"),
        ("timestamp_out_of_window", 401, ClipAuthError, "timestamp_out_of_window"),
        ("nonce_reused", None, ClipAuthError, "nonce_reused"),
        ("invalid_request", 401, ClipAuthError, "unauthorized"),  # a 401 whose code is not an auth code
        ("download_failed", 502, ClipImageFetchError, "download_failed"),
        ("download_timeout", None, ClipImageFetchError, "download_timeout"),
        ("invalid_url", 422, ClipInvalidRequestError, "invalid_url"),
        ("", 404, ClipInvalidRequestError, "invalid_request"),
        ("invalid_image", None, ClipInvalidRequestError, "invalid_image"),
        ("url_not_allowed", None, ClipInvalidRequestError, "url_not_allowed"),
        ("request_too_large", None, ClipInvalidRequestError, "request_too_large"),
        ("internal_error", 500, ClipServerError, "internal_error"),
        ("handler_exception", None, ClipServerError, "handler_exception"),
        ("", 500, ClipServerError, "server_error"),
    ],
)
def test_client_maps_code_and_status_to_exception(code, status, exc, expected_code):
    error = error_for(code, "m", status, "req-9")
    assert type(error) is exc and error.code == expected_code and error.request_id == "req-9"


@pytest.mark.parametrize("code", sorted(AUTH_CODES - {ErrorCode.UNAUTHORIZED}))
def test_cli_auth_error_hint_follows_the_code(code):
    hint = error_document(ClipAuthError("m", code=code, request_id="req-8"), "runpod_pod")["error"]["hint"]
    assert hint == f"{AUTH_HINTS[code]}; the server logs the refusal as 'auth refused' with request_id req-8"


def test_cli_has_a_hint_for_every_auth_code_of_the_service():
    assert set(AUTH_HINTS) == AUTH_CODES - {ErrorCode.UNAUTHORIZED}


@pytest.mark.parametrize("backend", ["runpod_pod", "runpod_serverless"])
def test_cli_unauthorized_error_says_what_to_check_and_the_request_id(backend):
    document = error_document(ClipAuthError("missing or invalid request signature", request_id="req-7"), backend)
    error = document["error"]
    assert (error["code"], error["message"], error["request_id"]) == (
        "unauthorized",
        "missing or invalid request signature",
        "req-7",
    )
    hint = error["hint"]
    assert "EMBEDDING_HMAC_SECRET" in hint and "AUTH_MAX_SKEW_S" in hint and "clock" in hint
    assert "request_id req-7" in hint
    assert ("RUNPOD_API_KEY" in hint) == (backend == "runpod_serverless")


def test_cli_other_errors_have_no_hint():
    assert error_document(ClipClientError("boom"), "runpod_pod") == {
        "error": {"code": "client_error", "message": "boom"}
    }
