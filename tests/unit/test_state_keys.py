"""Shared-state pieces that need no Redis: key names, the failure log, the rate-limit error."""

from __future__ import annotations

import hashlib
import logging

import pytest

from app.api.errors import service_error_response
from app.errors import RateLimited, ServiceError
from app.state.errors import StoreUnavailable
from app.state.failures import FailureLog
from app.state.keys import cache_key, model_tag, nonce_key, ratelimit_key, signing_key_id


def test_state_signing_key_id_is_a_short_hash_that_does_not_contain_the_secret():
    secret = "abcdef0123456789"
    key_id = signing_key_id(secret)
    assert key_id == hashlib.sha256(b"ratelimit:abcdef0123456789").hexdigest()[:12]
    assert len(key_id) == 12 and secret not in key_id
    assert signing_key_id("another secret") != key_id


def test_state_key_names_are_namespaced():
    assert nonce_key("clip", "n0nce") == "clip:nonce:n0nce"
    assert ratelimit_key("clip", "0123456789ab") == "clip:rl:0123456789ab"
    tag = model_tag("ViT-B-32/laion2b_s34b_b79k")
    assert len(tag) == 16 and tag != model_tag("ViT-B-32/openai")
    assert cache_key("clip", tag, "text:" + "0" * 64) == f"clip:emb:{tag}:text:{'0' * 64}"


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_state_failure_log_counts_every_failure_and_logs_once_per_interval(caplog: pytest.LogCaptureFixture):
    clock = _Clock()
    failures = FailureLog(logging.getLogger("test.state"), "nonce check", interval_s=30.0, clock=clock)
    logged = []
    with caplog.at_level(logging.WARNING, logger="test.state"):
        for step in (0.0, 10.0, 19.9, 0.2, 5.0):
            clock.now += step
            logged.append(failures.note(ConnectionError("refused")))
    assert logged == [True, False, False, True, False]
    assert failures.count == 5
    messages = [r.getMessage().split("; ") for r in caplog.records]
    assert messages == [
        [
            "nonce check: shared store failed (ConnectionError: refused)",
            f"{n} similar failures not logged since the last warning",
        ]
        for n in (0, 2)
    ]


@pytest.mark.parametrize(("retry_after_s", "header"), [(0.0001, "1"), (1.0, "1"), (1.2, "2"), (299.5, "300")])
def test_state_rate_limited_is_429_with_retry_after_in_whole_seconds_rounded_up(retry_after_s: float, header: str):
    error = RateLimited("over the limit", retry_after_s)
    response = service_error_response(error)
    assert (response.status_code, response.headers["retry-after"], isinstance(error, ServiceError)) == (
        429,
        header,
        True,
    )
    assert error.code == "rate_limited"


def test_state_store_unavailable_is_the_unavailable_domain_error():
    from app.errors import Unavailable

    error = StoreUnavailable("the nonce store is unreachable")
    assert isinstance(error, Unavailable) and error.code == "unavailable"
