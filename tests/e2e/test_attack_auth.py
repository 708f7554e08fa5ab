"""Attack suite, authentication: tampered signatures and bodies, timestamps at the window edge,
malformed and huge timestamps, replayed nonces, rotated secrets, raw paths, and insecure mode."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from clip_client.signing import canonical_message, new_nonce, sign, signed_headers, text_payload_id

from app.auth.nonces import NONCE_MARGIN_S, MemoryNonceStore, nonce_ttl_s
from app.auth.verify import AuthHeaders, RequestVerifier, make_verifier
from app.errors import (
    MalformedAuthHeaders,
    MissingAuthHeaders,
    NonceReused,
    Overloaded,
    SignatureMismatch,
    TimestampOutOfWindow,
    Unauthorized,
)
from app.ops.logs import JsonFormatter
from tests.support.api import SECRET, call
from tests.support.data import tiny_settings
from tests.support.service import RunningService, run_service

SKEW = 300
NOW = 1_700_000_000
PATH = "/v1/embed/text"
PAYLOAD = text_payload_id("a photo of a cat")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(
    secrets: list[str] | None = None, *, require_nonce: bool = False, store: MemoryNonceStore | None = None
) -> RequestVerifier:
    return RequestVerifier(
        secrets or [SECRET],
        max_skew_s=SKEW,
        insecure=False,
        require_nonce=require_nonce,
        gate=store if store is not None else MemoryNonceStore(1000, clock=Clock(0)),
        clock=Clock(NOW),
    )


def headers(
    secret: str = SECRET, *, ts: int | str = NOW, nonce: str | None = None, payload: str = PAYLOAD
) -> AuthHeaders:
    signed = signed_headers(secret, "POST", PATH, payload, timestamp=int(ts), nonce=nonce)
    return AuthHeaders(timestamp=str(ts), signature=signed["X-Signature"], nonce=nonce)


def verify(v: RequestVerifier, h: AuthHeaders, payload: str = PAYLOAD, path: str = PATH) -> None:
    v.precheck(h)
    asyncio.run(v.admit(v.check("POST", path, payload, h), 0))


def test_verifier_accepts_valid_signature():
    verify(verifier(), headers())


@pytest.mark.parametrize("position", [0, 1, 31, 62, 63])
def test_verifier_refuses_flipped_signature_byte(position):
    h = headers()
    sig = list(h.signature)
    sig[position] = "0" if sig[position] != "0" else "1"
    with pytest.raises(SignatureMismatch):
        verify(verifier(), AuthHeaders(h.timestamp, "".join(sig), None))


def test_verifier_accepts_uppercase_hex_signature():
    h = headers()
    verify(verifier(), AuthHeaders(h.timestamp, h.signature.upper(), None))


@pytest.mark.parametrize(
    "signature",
    ["abc", "g" * 64, "a" * 63, "a" * 65, "é" * 64, "a" * 63 + "é", "\u0661" * 64, "a" * 4096],
    ids=["short", "non-hex", "63", "65", "non-ascii", "non-ascii-last", "arabic-digits", "huge"],
)
def test_verifier_refuses_malformed_signature(signature):
    with pytest.raises(MalformedAuthHeaders, match="^malformed X-Signature: expected 64 hex characters$"):
        verify(verifier(), AuthHeaders(str(NOW), signature, None))


def test_verifier_refuses_empty_signature_as_missing():
    with pytest.raises(MissingAuthHeaders, match="^missing X-Signature: sign the request"):
        verify(verifier(), AuthHeaders(str(NOW), "", None))


def test_verifier_refuses_body_changed_after_signing():
    with pytest.raises(SignatureMismatch):
        verify(verifier(), headers(), payload=text_payload_id("a photo of a dog"))


@pytest.mark.parametrize("path", ["/v1/embed/image", "/v1/embed/%74ext", "/v1/embed/text/", "//v1/embed/text"])
def test_verifier_refuses_other_path(path):
    with pytest.raises(SignatureMismatch):
        verify(verifier(), headers(), path=path)


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [(-SKEW, True), (-SKEW - 1, False), (SKEW, True), (SKEW + 1, False)],
    ids=["stale-edge", "stale-edge+1s", "future-edge", "future-edge+1s"],
)
def test_verifier_timestamp_window_edge(offset, accepted):
    h = headers(ts=NOW + offset)
    if accepted:
        verify(verifier(), h)
    else:
        with pytest.raises(TimestampOutOfWindow):
            verify(verifier(), h)


@pytest.mark.parametrize(
    ("timestamp", "error"),
    [
        *[
            (ts, MalformedAuthHeaders)
            for ts in (
                "abc",
                "12.5",
                "-5",
                "+5",
                "1e9",
                " 1700000000",
                "1700000000 ",
                "1700000000\n",
                "１７００",
                "0x10",
            )
        ],
        ("", MissingAuthHeaders),
        (None, MissingAuthHeaders),
    ],
)
def test_verifier_refuses_non_numeric_timestamp(timestamp, error):
    sig = headers().signature
    with pytest.raises(error):
        verify(verifier(), AuthHeaders(timestamp, sig, None))


@pytest.mark.parametrize(
    ("timestamp", "error"),
    [
        ("9" * 12, TimestampOutOfWindow),
        ("9" * 13, MalformedAuthHeaders),
        ("9" * 100, MalformedAuthHeaders),
        (str(2**64), MalformedAuthHeaders),
        ("0", TimestampOutOfWindow),
        ("0" * 12, TimestampOutOfWindow),
    ],
)
def test_verifier_refuses_huge_or_zero_timestamp(timestamp, error):
    sig = headers().signature
    with pytest.raises(error):
        verify(verifier(), AuthHeaders(timestamp, sig, None))


# --- nonces -------------------------------------------------------------------------------


def test_verifier_refuses_replayed_nonce():
    v, h = verifier(), headers(nonce=new_nonce())
    verify(v, h)
    with pytest.raises(NonceReused):
        verify(v, h)


def test_verifier_accepts_fresh_nonces():
    v = verifier()
    for nonce in ("A" * 16, "b" * 64, "x-Y_z" * 4):
        verify(v, headers(nonce=nonce))


def test_verifier_keeps_a_nonce_through_its_timestamps_whole_window():
    # Admitted at the first second its timestamp is accepted, replayed at the window's last moment: the
    # server's clock reads ts + SKEW + 0.999, which rounds down into the window.
    wall, store_clock = Clock(NOW - SKEW), Clock(0)
    v = RequestVerifier(
        [SECRET],
        max_skew_s=SKEW,
        insecure=False,
        require_nonce=True,
        gate=MemoryNonceStore(10, clock=store_clock),
        clock=wall,
    )
    h = headers(ts=NOW, nonce=new_nonce())
    verify(v, h)
    last_moment = 2 * SKEW + 0.999
    wall.now, store_clock.now = NOW - SKEW + last_moment, last_moment
    with pytest.raises(NonceReused):
        verify(v, h)


def test_nonce_ttl_is_the_whole_window_and_a_margin():
    assert nonce_ttl_s(SKEW) == 2 * SKEW + 1 + NONCE_MARGIN_S and NONCE_MARGIN_S >= 1


def test_nonce_store_forgets_a_nonce_once_its_ttl_passed():
    store_clock = Clock(0)
    store = MemoryNonceStore(10, clock=store_clock)
    ttl = nonce_ttl_s(SKEW)
    assert asyncio.run(store.remember("n0nce-0123456789ab", ttl)) is True
    store_clock.now = ttl - 0.001
    assert asyncio.run(store.remember("n0nce-0123456789ab", ttl)) is False
    store_clock.now = ttl
    assert asyncio.run(store.remember("n0nce-0123456789ab", ttl)) is True  # memory stays bounded


def test_verifier_refuses_nonce_not_covered_by_signature():
    h = headers()  # signed without a nonce
    with pytest.raises(SignatureMismatch):
        verify(verifier(), AuthHeaders(h.timestamp, h.signature, new_nonce()))


def test_verifier_refused_request_does_not_burn_nonce():
    v, nonce = verifier(), new_nonce()
    with pytest.raises(SignatureMismatch):
        verify(v, headers("wrong-secret", nonce=nonce))
    verify(v, headers(nonce=nonce))


@pytest.mark.parametrize(
    "nonce",
    ["a" * 15, "a" * 65, "a" * 15 + " ", "a" * 16 + "\n", "a+b/c=" * 4, "é" * 16, ""],
    ids=["15", "65", "space", "newline", "base64-std", "non-ascii", "empty"],
)
def test_verifier_refuses_malformed_nonce(nonce):
    h = headers(nonce=nonce)
    with pytest.raises(MalformedAuthHeaders, match="^malformed X-Nonce"):
        verify(verifier(), h)


def test_verifier_require_nonce_refuses_missing_nonce():
    with pytest.raises(MissingAuthHeaders, match="^missing X-Nonce: .* \\(REQUIRE_NONCE=1\\)$"):
        verify(verifier(require_nonce=True), headers())
    verify(verifier(require_nonce=True), headers(nonce=new_nonce()))


def test_nonce_store_refuses_when_full_of_live_nonces():
    clock = Clock(0)
    store = MemoryNonceStore(3, clock=clock)
    assert [asyncio.run(store.remember(f"n{i}", 10)) for i in range(3)] == [True, True, True]
    with pytest.raises(Overloaded):
        asyncio.run(store.remember("n3", 10))
    assert asyncio.run(store.remember("n0", 10)) is False  # still remembered, not evicted
    clock.now = 10
    assert asyncio.run(store.remember("n3", 10)) is True
    assert len(store) == 1


def test_nonce_store_stays_bounded_under_flood():
    clock = Clock(0)
    store = MemoryNonceStore(100, clock=clock)
    sizes = set()
    for i in range(5000):
        clock.now = i  # one nonce per tick, each living 100 ticks: the store holds at most 100
        assert asyncio.run(store.remember(f"flood-{i}", 100)) is True
        sizes.add(len(store))
    assert max(sizes) == 100


# --- key rotation ---------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["new-secret-0123456789", "old-secret-0123456789"])
def test_verifier_accepts_every_rotated_secret(secret):
    verify(verifier(["new-secret-0123456789", "old-secret-0123456789"]), headers(secret))


def test_verifier_refuses_retired_secret():
    with pytest.raises(SignatureMismatch):
        verify(verifier(["new-secret-0123456789"]), headers("old-secret-0123456789"))


def test_make_verifier_splits_comma_separated_secrets():
    v = make_verifier(tiny_settings(embedding_hmac_secret=" new-secret , old-secret ,"))
    now = int(time.time())
    for secret in ("new-secret", "old-secret"):
        h = signed_headers(secret, "POST", PATH, PAYLOAD, timestamp=now)
        verify(v, AuthHeaders(h["X-Timestamp"], h["X-Signature"], None))


@pytest.mark.parametrize("value", [",", " , ,", "  "])
def test_settings_secret_of_only_commas_is_not_set(value):
    with pytest.raises(ValueError, match="EMBEDDING_HMAC_SECRET is not set"):
        tiny_settings(embedding_hmac_secret=value)


def test_verifier_insecure_mode_accepts_anything():
    v = RequestVerifier([], max_skew_s=SKEW, insecure=True, require_nonce=True, gate=MemoryNonceStore(1))
    verify(v, AuthHeaders(None, "garbage", "bad nonce"))


def test_verifier_logs_reason_without_secret_or_signature(caplog):
    h = headers("wrong-secret-987654321")
    with caplog.at_level(logging.WARNING, logger="app.auth.verify"), pytest.raises(Unauthorized):
        verify(verifier(), h)
    reason = "no EMBEDDING_HMAC_SECRET key signs this request (method, path, body, timestamp, nonce)"
    assert caplog.messages == [f"auth refused: bad signature for POST {PATH!r}: {reason}"]
    line = JsonFormatter().format(caplog.records[0])
    assert SECRET not in line and "wrong-secret" not in line and h.signature not in line


def refusal(caplog: pytest.LogCaptureFixture, h: AuthHeaders, v: RequestVerifier | None = None) -> logging.LogRecord:
    """Verify `h`, expect a refusal, and return its one log record."""
    with caplog.at_level(logging.WARNING, logger="app.auth.verify"), pytest.raises(Unauthorized):
        verify(v or verifier(), h)
    (record,) = [r for r in caplog.records if r.name == "app.auth.verify"]
    return record


@pytest.mark.parametrize(
    ("make_headers", "reason"),
    [
        (lambda: AuthHeaders(None, None, None, "req-1"), "missing X-Timestamp"),
        (lambda: AuthHeaders(str(NOW), None, None, "req-1"), "missing X-Signature"),
        (lambda: replace(headers("wrong-secret"), request_id="req-1"), "bad signature for POST"),
        (lambda: replace(headers(nonce="n" * 15), request_id="req-1"), "malformed X-Nonce"),
    ],
    ids=["missing-timestamp", "missing-signature", "bad-signature", "malformed-nonce"],
)
def test_verifier_refusal_log_carries_request_id(caplog, make_headers, reason):
    record = refusal(caplog, make_headers())
    assert record.getMessage().startswith(f"auth refused: {reason}")
    assert record.request_id == "req-1"
    assert json.loads(JsonFormatter().format(record))["request_id"] == "req-1"


@pytest.mark.parametrize(("offset", "side"), [(-3600, "behind"), (SKEW + 1, "ahead of")])
def test_verifier_clock_skew_log_gives_both_clocks(caplog, offset, side):
    record = refusal(caplog, replace(headers(ts=NOW + offset), request_id="req-2"))
    assert record.getMessage() == (
        f"auth refused: clock skew: X-Timestamp {NOW + offset} is {abs(offset)}s {side} the server's clock {NOW} "
        f"(AUTH_MAX_SKEW_S={SKEW})"
    )
    assert (record.request_id, record.client_time, record.server_time, record.skew_s) == (
        "req-2",
        NOW + offset,
        NOW,
        offset,
    )


def test_verifier_reused_nonce_log_says_so(caplog):
    v, h = verifier(), replace(headers(nonce=new_nonce()), request_id="req-3")
    verify(v, h)
    record = refusal(caplog, h, v)
    assert record.getMessage().startswith("auth refused: reused X-Nonce") and record.request_id == "req-3"


# --- through the API ------------------------------------------------------------------------

BODY = {"text": "a photo of a cat"}


def signed(secret: str = SECRET, *, ts: int | None = None, nonce: str | None = None, body: dict = BODY) -> dict:
    return signed_headers(secret, "POST", PATH, text_payload_id(body["text"]), timestamp=ts, nonce=nonce)


def tampered(h: dict[str, str], **changes: str) -> dict[str, str]:
    return h | changes


SIGN_HOW = "sign the request (docs/api.md#authentication)"
MISMATCH = re.compile(
    r"the signature does not match this request: no key of the service signs "
    r"'POST\|/v1/embed/text\|[0-9a-f]{64}\|[0-9]+(\|[A-Za-z0-9_-]+)?'; check the secret, and sign the method, the "
    r"path as sent, the payload id and the timestamp \(docs/api\.md#authentication\)"
)
SKEWED = re.compile(
    r"X-Timestamp [0-9]+ is 3600 s (behind|ahead of) the server's clock \([0-9]+\); at most 300 s either way is "
    r"accepted \(AUTH_MAX_SKEW_S\): check this machine's clock"
)


@pytest.mark.parametrize(
    ("make_headers", "code", "message"),
    [
        (dict, "missing_auth_headers", f"missing X-Timestamp and X-Signature: {SIGN_HOW}"),
        (lambda: {"X-Timestamp": str(int(time.time()))}, "missing_auth_headers", f"missing X-Signature: {SIGN_HOW}"),
        (lambda: tampered(signed(), **{"X-Signature": "0" * 64}), "signature_mismatch", MISMATCH),
        (lambda: signed("wrong-secret"), "signature_mismatch", MISMATCH),
        (lambda: signed(ts=int(time.time()) - 3600), "timestamp_out_of_window", SKEWED),
        (lambda: signed(ts=int(time.time()) + 3600), "timestamp_out_of_window", SKEWED),
        (
            lambda: tampered(signed(), **{"X-Timestamp": "soon"}),
            "malformed_auth_headers",
            "malformed X-Timestamp: expected Unix seconds (1 to 12 digits)",
        ),
        (
            lambda: tampered(signed(), **{"X-Timestamp": "9" * 40}),
            "malformed_auth_headers",
            "malformed X-Timestamp: expected Unix seconds (1 to 12 digits)",
        ),
        (
            lambda: tampered(signed(), **{"X-Signature": "é" * 64}),
            "malformed_auth_headers",
            "malformed X-Signature: expected 64 hex characters",
        ),
        (
            lambda: tampered(signed(), **{"X-Nonce": "short"}),
            "malformed_auth_headers",
            "malformed X-Nonce: expected 16-64 characters of A-Za-z0-9_-",
        ),
        (lambda: tampered(signed(), **{"X-Nonce": new_nonce()}), "signature_mismatch", MISMATCH),
    ],
    ids=[
        "no-headers",
        "no-signature",
        "zero-signature",
        "wrong-secret",
        "stale",
        "future",
        "word-timestamp",
        "huge-timestamp",
        "non-ascii-signature",
        "malformed-nonce",
        "unsigned-nonce",
    ],
)
def test_api_auth_failure_says_which_check_failed(service, make_headers, code, message):
    status, body, got = call(service.base, PATH, BODY, secret=None, headers=make_headers())
    assert (status, sorted(body), sorted(body["error"])) == (401, ["error"], ["code", "message", "request_id"])
    assert (body["error"]["code"], body["error"]["request_id"]) == (code, got["x-request-id"])
    if isinstance(message, str):
        assert body["error"]["message"] == message
    else:
        assert message.fullmatch(body["error"]["message"]), body["error"]["message"]


def test_api_auth_failure_body_holds_no_secret_or_expected_signature(service):
    h = signed("wrong-secret-0123456789")
    ts = int(h["X-Timestamp"])
    expected = sign(SECRET, canonical_message("POST", PATH, text_payload_id(BODY["text"]), ts))
    status, body, _ = call(service.base, PATH, BODY, secret=None, headers=h)
    text = json.dumps(body)
    assert (status, body["error"]["code"]) == (401, "signature_mismatch")
    assert SECRET not in text and expected not in text and h["X-Signature"] not in text


@pytest.mark.parametrize(
    ("secret", "reason"),
    [(None, "missing X-Timestamp"), ("wrong-secret", "bad signature for POST")],
    ids=["unsigned", "wrong-secret"],
)
def test_api_refusal_log_carries_the_request_id_the_caller_got(service, caplog, secret, reason):
    caplog.set_level(logging.WARNING, logger="app.auth.verify")
    status, _, got = call(service.base, PATH, BODY, secret=secret)
    (record,) = [r for r in caplog.records if r.name == "app.auth.verify"]
    assert status == 401 and record.getMessage().startswith(f"auth refused: {reason}")
    assert record.request_id == got["x-request-id"]


def test_api_refuses_body_changed_after_signing(service):
    status, body, _ = call(service.base, PATH, {"text": "a photo of a dog"}, secret=None, headers=signed())
    assert (status, body["error"]["code"]) == (401, "signature_mismatch")


def test_api_verifies_raw_path(service):
    # The router decodes %74 to "t", but the signature must cover the path as sent, and the message says so.
    status, body, _ = call(service.base, "/v1/embed/%74ext", BODY, secret=None, headers=signed())
    assert (status, body["error"]["code"]) == (401, "signature_mismatch")
    assert "'POST|/v1/embed/%74ext|" in body["error"]["message"]


@pytest.fixture(scope="module")
def rotated_service() -> Iterator[RunningService]:
    settings = tiny_settings(embedding_hmac_secret="new-secret-0123456789,old-secret-0123456789", require_nonce=True)
    with run_service(settings) as running:
        yield running


@pytest.mark.parametrize("secret", ["new-secret-0123456789", "old-secret-0123456789"])
def test_api_accepts_every_rotated_secret(rotated_service, secret):
    status, body, _ = call(rotated_service.base, PATH, BODY, secret=None, headers=signed(secret, nonce=new_nonce()))
    assert status == 200 and body["dim"] == 64


def test_api_refuses_secret_not_configured(rotated_service):
    status, body, _ = call(rotated_service.base, PATH, BODY, secret=None, headers=signed(nonce=new_nonce()))
    assert (status, body["error"]["code"]) == (401, "signature_mismatch")


def test_api_refuses_replayed_nonce(rotated_service):
    h = signed("new-secret-0123456789", nonce=new_nonce())
    first, _, _ = call(rotated_service.base, PATH, BODY, secret=None, headers=h)
    second, body, got = call(rotated_service.base, PATH, BODY, secret=None, headers=h)
    error = {
        "code": "nonce_reused",
        "message": "X-Nonce was already used by an accepted request: send a new nonce with every request, retries too",
        "request_id": got["x-request-id"],
    }
    assert (first, second, body) == (200, 401, {"error": error})


def test_api_require_nonce_refuses_missing_nonce(rotated_service):
    status, body, _ = call(rotated_service.base, PATH, BODY, secret=None, headers=signed("new-secret-0123456789"))
    message = "missing X-Nonce: this service requires a new nonce in every signed request (REQUIRE_NONCE=1)"
    assert (status, body["error"]["code"], body["error"]["message"]) == (401, "missing_auth_headers", message)


@pytest.fixture(scope="module")
def insecure_service() -> Iterator[RunningService]:
    with run_service(tiny_settings(embedding_hmac_secret=None, allow_insecure_auth=True)) as running:
        yield running


@pytest.mark.parametrize(
    "extra", [{}, {"X-Signature": "garbage", "X-Timestamp": "0", "X-Nonce": "x"}], ids=["unsigned", "garbage-headers"]
)
def test_api_insecure_mode_accepts_unsigned_request(insecure_service, extra):
    status, body, _ = call(insecure_service.base, PATH, BODY, secret=None, headers=extra)
    assert status == 200 and body["dim"] == 64
    health_status, health, _ = call(insecure_service.base, "/health")
    assert (health_status, health["auth"]) == (200, "insecure")


# --- the legacy serverless handler shares the hostile-header rules ----------------------------


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [("now", "é" * 64), ("now", "a" * 63 + "é"), ("now\n", "ok"), ("now", "g" * 64)],
    ids=["non-ascii-signature", "non-ascii-last", "timestamp-newline", "non-hex"],
)
async def test_legacy_handler_refuses_malformed_headers(timestamp, signature):
    from clip_client.signing import legacy_message, sign

    from app.legacy import LegacyHandler
    from tests.support.fake_model import FakeEmbedder

    url, now = "http://127.0.0.1/x.jpg", str(int(time.time()))
    timestamp = timestamp.replace("now", now)
    if signature == "ok":
        signature = sign(SECRET, legacy_message(url, now))
    handler = LegacyHandler(tiny_settings(), FakeEmbedder())
    try:
        out = await handler.handle({"input": {"image_url": url, "timestamp": timestamp, "signature": signature}})
    finally:
        await handler.aclose()
    assert out == {"error": {"code": "unauthorized", "message": "missing or invalid signature"}}


async def test_legacy_handler_refusal_log_carries_the_job_id(caplog):
    from clip_client.signing import legacy_message, sign

    from app.legacy import LegacyHandler
    from tests.support.fake_model import FakeEmbedder

    url, now = "http://127.0.0.1/x.jpg", str(int(time.time()))
    job_input = {"image_url": url, "timestamp": now, "signature": sign("wrong-secret", legacy_message(url, now))}
    handler = LegacyHandler(tiny_settings(), FakeEmbedder())
    try:
        with caplog.at_level(logging.WARNING, logger="app.auth.verify"):
            out = await handler.handle({"id": "job-42", "input": job_input})
    finally:
        await handler.aclose()
    (record,) = [r for r in caplog.records if r.name == "app.auth.verify"]
    assert out["error"]["code"] == "unauthorized" and record.request_id == "job-42"
    assert record.getMessage().startswith("auth refused: bad signature for the legacy job")
