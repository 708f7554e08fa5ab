"""Every 401 case, start-up refusal without a secret, and insecure mode."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from clip_client.signing import canonical_message, image_payload_id, sign, text_payload_id
from pydantic import ValidationError

from app.settings import Settings
from tests.support.api import SECRET, call
from tests.support.data import tiny_settings
from tests.support.service import run_service

TEXT = {"text": "a photo of a cat"}


def _headers(ts: int | str, signature: str) -> dict[str, str]:
    return {"X-Timestamp": str(ts), "X-Signature": signature}


def _text_signature(ts: int | str, text: str = TEXT["text"], secret: str = SECRET, path: str = "/v1/embed/text") -> str:
    return sign(secret, canonical_message("POST", path, text_payload_id(text), ts))


def _assert_unauthorized(status: int, body: dict, code: str) -> None:
    assert (status, body["error"]["code"]) == (401, code)


def test_signed_text_request_succeeds(service):
    status, body, _ = call(service.base, "/v1/embed/text", TEXT)
    assert status == 200 and len(body["embedding"]) == 64


def test_auth_missing_headers(service):
    _assert_unauthorized(*call(service.base, "/v1/embed/text", TEXT, secret=None)[:2], "missing_auth_headers")


@pytest.mark.parametrize("missing", ["X-Timestamp", "X-Signature"])
def test_auth_one_header_missing(service, missing):
    ts = int(time.time())
    headers = _headers(ts, _text_signature(ts))
    del headers[missing]
    status, body, _ = call(service.base, "/v1/embed/text", TEXT, secret=None, headers=headers)
    _assert_unauthorized(status, body, "missing_auth_headers")
    assert body["error"]["message"].startswith(f"missing {missing}: ")


def test_auth_wrong_secret(service):
    status, body, _ = call(service.base, "/v1/embed/text", TEXT, secret="not-the-secret")
    _assert_unauthorized(status, body, "signature_mismatch")


def test_auth_flipped_signature_byte(service):
    ts = int(time.time())
    good = _text_signature(ts)
    flipped = ("1" if good[0] != "1" else "2") + good[1:]
    status, body, _ = call(service.base, "/v1/embed/text", TEXT, secret=None, headers=_headers(ts, flipped))
    _assert_unauthorized(status, body, "signature_mismatch")


def test_auth_body_changed_after_signing(service):
    ts = int(time.time())
    headers = _headers(ts, _text_signature(ts, text="a photo of a dog"))
    status, body, _ = call(service.base, "/v1/embed/text", TEXT, secret=None, headers=headers)
    _assert_unauthorized(status, body, "signature_mismatch")


def test_auth_signature_for_other_path(service, image_server):
    url = image_server.url("img/photo0.jpg")
    ts = int(time.time())
    sig = sign(SECRET, canonical_message("POST", "/v1/embed/image-batch", image_payload_id(url), ts))
    status, body, _ = call(service.base, "/v1/embed/image", {"image_url": url}, secret=None, headers=_headers(ts, sig))
    _assert_unauthorized(status, body, "signature_mismatch")


@pytest.mark.parametrize("offset", [-400, 400])
def test_auth_timestamp_outside_window(service, offset):
    ts = int(time.time()) + offset
    status, body, _ = call(service.base, "/v1/embed/text", TEXT, secret=None, headers=_headers(ts, _text_signature(ts)))
    _assert_unauthorized(status, body, "timestamp_out_of_window")


@pytest.mark.parametrize(
    ("ts", "code"),
    [
        ("abc", "malformed_auth_headers"),
        ("1.5e9", "malformed_auth_headers"),
        ("-5", "malformed_auth_headers"),
        ("99999999999999999999", "malformed_auth_headers"),
        ("", "missing_auth_headers"),
    ],
)
def test_auth_malformed_timestamp(service, ts, code):
    status, body, _ = call(service.base, "/v1/embed/text", TEXT, secret=None, headers=_headers(ts, _text_signature(ts)))
    _assert_unauthorized(status, body, code)


def test_auth_checked_before_body_validation(service):
    status, body, _ = call(service.base, "/v1/embed/text", {"nope": 1}, secret=None)
    _assert_unauthorized(status, body, "missing_auth_headers")


def test_health_needs_no_auth(service):
    status, body, _ = call(service.base, "/health")
    assert status == 200 and body["auth"] == "hmac"


def test_settings_refuse_missing_secret(monkeypatch):
    monkeypatch.delenv("EMBEDDING_HMAC_SECRET", raising=False)
    monkeypatch.delenv("ALLOW_INSECURE_AUTH", raising=False)
    with pytest.raises(ValidationError, match="EMBEDDING_HMAC_SECRET is not set"):
        Settings()


def test_server_start_refused_without_secret():
    env = {k: v for k, v in os.environ.items() if k not in ("EMBEDDING_HMAC_SECRET", "ALLOW_INSECURE_AUTH")}
    proc = subprocess.run(
        [sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert "EMBEDDING_HMAC_SECRET is not set" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_insecure_mode_accepts_unsigned_requests(image_server):
    settings = tiny_settings(embedding_hmac_secret=None, allow_insecure_auth=True)
    with run_service(settings) as svc:
        _, health, _ = call(svc.base, "/health")
        status, body, _ = call(
            svc.base, "/v1/embed/image", {"image_url": image_server.url("img/photo0.jpg")}, secret=None
        )
    assert health["auth"] == "insecure"
    assert status == 200 and len(body["embedding"]) == 64
