"""Attack suite, request limits: bodies over MAX_REQUEST_BYTES (declared or chunked) get 413 before
parsing; texts over MAX_TEXT_CHARS get 422; malformed bodies get the JSON error shape."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator

import pytest
from clip_client.signing import signed_headers, text_payload_id

from tests.support.api import call
from tests.support.data import tiny_settings
from tests.support.service import RunningService, run_service

LIMIT = 4096
TOO_LARGE = "request_too_large"


@pytest.fixture(scope="module")
def small_service() -> Iterator[RunningService]:
    with run_service(tiny_settings(max_request_bytes=LIMIT, max_text_chars=100)) as running:
        yield running


def connect(service: RunningService) -> http.client.HTTPConnection:
    host, port = service.base.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=30)


def answer(conn: http.client.HTTPConnection) -> tuple[int, dict, dict[str, str]]:
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read()), {k.lower(): v for k, v in resp.getheaders()}


def text_request(text: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"text": text}).encode()
    headers = signed_headers("test-secret-0123456789abcdef", "POST", "/v1/embed/text", text_payload_id(text))
    return body, {"Content-Type": "application/json", **headers}


def test_api_declared_oversized_body_is_413_before_reading(small_service):
    # Declare 10 MiB but send only the headers: the answer must not wait for the body.
    status, body, headers = send_headers_only(small_service, 10 << 20)
    assert (status, body["error"]["code"]) == (413, TOO_LARGE)
    assert body["error"]["message"] == f"request body is {10 << 20} bytes; at most {LIMIT} are accepted"
    assert headers["connection"] == "close"


def test_api_chunked_oversized_body_is_413(small_service):
    conn = connect(small_service)
    conn.putrequest("POST", "/v1/embed/text")
    for name, value in text_request("x")[1].items():  # well-formed headers: the body is read
        conn.putheader(name, value)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    piece = b'{"text": "' + b"a" * 1000
    for _ in range(5):  # 5 KB > LIMIT, never declared
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    status, body, _ = answer(conn)
    assert (status, body) == (413, {"error": {"code": TOO_LARGE, "message": f"request body is over {LIMIT} bytes"}})


def test_api_chunked_body_within_limit_is_parsed(small_service):
    body, headers = text_request("a cat")
    conn = connect(small_service)
    conn.request("POST", "/v1/embed/text", body=iter([body[:5], body[5:]]), headers=headers, encode_chunked=True)
    status, payload, _ = answer(conn)
    assert (status, payload["dim"]) == (200, 64)


@pytest.mark.parametrize(("size", "status"), [(LIMIT, 422), (LIMIT + 1, 413)], ids=["at-limit", "over-limit"])
def test_api_body_limit_edge(small_service, size, status):
    # Junk of exactly `size` bytes with well-formed signature headers: at the limit it reaches the
    # parser (422), over it not.
    got, body, _ = call(
        small_service.base, "/v1/embed/text", raw=b" " * size, secret=None, headers=text_request("x")[1]
    )
    assert got == status
    assert body["error"]["code"] == ("invalid_request" if status == 422 else TOO_LARGE)


@pytest.mark.parametrize(("chars", "status"), [(100, 200), (101, 422)])
def test_api_text_limit_edge(small_service, chars, status):
    got, body, _ = call(small_service.base, "/v1/embed/text", {"text": "a" * chars})
    assert got == status
    if status == 422:
        message = "text is 101 characters; at most 100 are accepted"
        assert body == {"error": {"code": "invalid_request", "message": message}}


def send_headers_only(service: RunningService, length: int) -> tuple[int, dict, dict[str, str]]:
    """Declare a body of `length` bytes, send none of it, and read the answer."""
    conn = connect(service)
    conn.putrequest("POST", "/v1/embed/text")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    return answer(conn)


def test_api_default_request_limit_is_32_mebibytes(service):
    # Sized for a batch of photos sent inline or uploaded (docs/security.md#requests).
    status, body, _ = send_headers_only(service, (32 << 20) + 1)
    message = f"request body is {(32 << 20) + 1} bytes; at most {32 << 20} are accepted"
    assert (status, body["error"]["message"]) == (413, message)


@pytest.mark.parametrize(
    "raw",
    [b"{", b"null", b"[]", b'{"text": 5}', b'{"text": "a", "extra": 1}', b"\xff\xfe", b'{"text": "\\ud800"}'],
    ids=["broken-json", "null", "list", "wrong-type", "extra-field", "not-utf8", "lone-surrogate"],
)
def test_api_malformed_body_gets_json_error(service, raw):
    _, headers = text_request("x")
    got, body, _ = call(service.base, "/v1/embed/text", raw=raw, secret=None, headers=headers)
    assert (got, body["error"]["code"]) == (422, "invalid_request")
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}


def test_api_empty_body_gets_json_error(service):
    conn = connect(service)
    conn.request("POST", "/v1/embed/text", body=b"", headers=text_request("x")[1])
    status, body, _ = answer(conn)
    assert (status, body["error"]["code"]) == (422, "invalid_request")


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json; charset=utf-8", 200),
        ("application/vnd.clip+json", 200),
        ("text/plain", 422),
        ("application/x-www-form-urlencoded", 422),
    ],
)
def test_api_accepts_only_json_bodies(service, content_type, status):
    body, headers = text_request("a cat")
    got, answer_body, _ = call(
        service.base, "/v1/embed/text", raw=body, secret=None, headers=headers | {"Content-Type": content_type}
    )
    assert got == status
    if status == 422:
        assert answer_body["error"] == {"code": "invalid_request", "message": "Content-Type must be application/json"}


def test_api_unsigned_malformed_body_is_refused_for_its_headers_first(service):
    got, body, _ = call(service.base, "/v1/embed/text", raw=b"{", secret=None)
    assert (got, body["error"]["code"]) == (401, "missing_auth_headers")


def test_api_client_gone_mid_body_is_not_an_internal_error(small_service):
    body, headers = text_request("a cat")
    conn = connect(small_service)
    conn.putrequest("POST", "/v1/embed/text")
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(len(body) + 100))
    conn.endheaders()
    conn.send(body)  # 100 bytes short, then gone
    conn.close()
    # The server notices the disconnect and logs the request; it must count as the caller's error.
    for _ in range(100):
        _, metrics = http_get(small_service, "/metrics")
        if 'endpoint="/v1/embed/text",status="422"' in metrics:
            break
        time.sleep(0.05)
    assert 'endpoint="/v1/embed/text",status="422"' in metrics
    assert 'clip_errors_total{code="internal_error"}' not in metrics


def http_get(service: RunningService, path: str) -> tuple[int, str]:
    conn = connect(service)
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


@pytest.mark.parametrize("path", ["/v1/embed/image", "/v1/embed/image-batch", "/v1/embed/text"])
def test_openapi_documents_each_signed_body_and_its_headers(service, path):
    _, text = http_get(service, "/openapi.json")
    document = json.loads(text)
    operation = document["paths"][path]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.removeprefix("#/components/schemas/")]
    assert schema["title"].startswith("Embed") and schema["title"].endswith("Request")
    assert schema["additionalProperties"] is False and schema["required"]
    assert [p["name"] for p in operation["parameters"] if p["in"] == "header"] == [
        "X-Timestamp",
        "X-Signature",
        "X-Nonce",
    ]
