"""X-Request-ID round trip, one structured log line per request, no secrets in logs."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest

from app.ops.logs import JsonFormatter
from tests.support.api import SECRET, call

HEX32 = re.compile(r"[0-9a-f]{32}")


def _request_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "app.request" and r.levelno == logging.INFO]


@pytest.mark.parametrize("given", ["abc-123", "worker-7:job.42", "A" * 128])
def test_request_id_given_is_returned(service, given):
    status, _, headers = call(service.base, "/v1/embed/text", {"text": "hi"}, headers={"X-Request-ID": given})
    assert (status, headers["x-request-id"]) == (200, given)


@pytest.mark.parametrize("given", [None, "", "A" * 129, "has space", "semi;colon", "ünïcode"])
def test_request_id_missing_or_odd_is_replaced_by_a_new_one(service, given):
    headers = {"X-Request-ID": given.encode("utf-8").decode("latin-1")} if given is not None else None
    first = call(service.base, "/health", headers=headers)[2]["x-request-id"]
    second = call(service.base, "/health", headers=headers)[2]["x-request-id"]
    assert HEX32.fullmatch(first) and HEX32.fullmatch(second) and first != second


def test_request_log_line_has_id_endpoint_status_items_duration_and_error(service, image_server, caplog):
    caplog.set_level(logging.INFO, logger="app.request")
    urls = [image_server.url("img/photo0.jpg"), image_server.url("img/missing.jpg")]
    call(service.base, "/v1/embed/image-batch", {"image_urls": urls}, headers={"X-Request-ID": "batch-1"})
    call(service.base, "/v1/embed/image", {"image_url": urls[1]}, headers={"X-Request-ID": "single-1"})
    call(service.base, "/v1/embed/text", {"text": "hi"}, secret="wrong-secret", headers={"X-Request-ID": "auth-1"})
    lines = {r.request_id: r for r in _request_lines(caplog)}
    batch, single, refused = lines["batch-1"], lines["single-1"], lines["auth-1"]
    assert (batch.endpoint, batch.status, batch.items, batch.error_code) == ("/v1/embed/image-batch", 200, 2, None)
    assert (single.endpoint, single.status, single.items, single.error_code) == (
        "/v1/embed/image",
        422,
        1,
        "download_failed",
    )
    assert (refused.status, refused.error_code) == (401, "signature_mismatch")
    assert batch.duration_ms > 0


def test_request_log_line_as_json_holds_no_secret_signature_or_text(service, caplog):
    caplog.set_level(logging.INFO, logger="app.request")
    text = "a private caption that must not be logged"
    _, _, headers = call(service.base, "/v1/embed/text", {"text": text})
    (record,) = [r for r in _request_lines(caplog) if r.request_id == headers["x-request-id"]]
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert {k: entry[k] for k in ("level", "logger", "endpoint", "status", "items", "error_code")} == {
        "level": "info",
        "logger": "app.request",
        "endpoint": "/v1/embed/text",
        "status": 200,
        "items": 1,
        "error_code": None,
    }
    assert text not in line and SECRET not in line and "signature" not in line.lower()


def test_json_formatter_writes_one_line_with_extras_and_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), exc_info)
    record.request_id = "r1"
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert (entry["msg"], entry["request_id"], entry["level"], entry["logger"]) == ("failed here", "r1", "error", "x")
    assert "ValueError: boom" in entry["exc"]
