"""API keys: the bearer header, constant-time matching against every key, refusals logged without the key."""

from __future__ import annotations

import json
import logging

import pytest

from app.auth.apikeys import ApiKeys, bearer_token
from app.auth.verify import UNSIGNED, make_verifier
from app.errors import ApiKeyInvalid, MissingAuthHeaders
from app.ops.logs import JsonFormatter
from app.state.keys import signing_key_id
from tests.support.data import tiny_settings

KEY = "sk-unit-0123456789abcdef0123456789abcdef"
OLD = "sk-old-0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (f"Bearer {KEY}", KEY),
        (f"bearer  {KEY} ", KEY),
        ("Bearer ", ""),
        ("Basic dXNlcjpwdw==", None),
        (KEY, None),
        (None, None),
    ],
)
def test_bearer_token_reads_the_bearer_scheme_only(header, token):
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("presented", "expected"), [(KEY, KEY), (OLD, OLD), (KEY[:-1], None), ("", None), ("é☃", None)]
)
def test_api_keys_match_every_listed_key_by_id(presented, expected):
    keys = ApiKeys([KEY, OLD])
    assert keys.match(presented) == (signing_key_id(expected) if expected else None)


@pytest.mark.parametrize(
    ("api_keys", "reason"),
    [
        (KEY, "auth refused: Authorization: Bearer: unknown API key"),
        (None, "auth refused: Authorization: Bearer: an API key was sent, but API_KEYS is not set"),
    ],
)
def test_verifier_refuses_an_unknown_key_logging_why_but_never_the_key(caplog, api_keys, reason):
    verifier = make_verifier(tiny_settings(api_keys=api_keys))
    told = "^the API key \\(Authorization: Bearer\\) is not one of this service's API_KEYS$"
    with caplog.at_level(logging.WARNING, logger="app.auth.verify"), pytest.raises(ApiKeyInvalid, match=told):
        verifier.check_api_key("sk-presented-secret-value", "req-1")
    (record,) = caplog.records
    assert record.getMessage() == reason
    line = JsonFormatter().format(record)
    assert "sk-presented" not in line and KEY not in line
    assert json.loads(line)["request_id"] == "req-1"


def test_verifier_admits_a_known_key_under_its_id():
    verified = make_verifier(tiny_settings(api_keys=f"{KEY},{OLD}")).check_api_key(OLD, None)
    assert (verified.key_id, verified.nonce) == (signing_key_id(OLD), None)


def test_verifier_insecure_mode_takes_any_key_as_unsigned():
    verifier = make_verifier(tiny_settings(embedding_hmac_secret=None, allow_insecure_auth=True))
    assert verifier.check_api_key("anything", None).key_id == UNSIGNED
    verifier.refuse_api_key(None)  # no refusal either


def test_verifier_refuses_a_bearer_key_on_a_signed_endpoint(caplog):
    verifier = make_verifier(tiny_settings(api_keys=KEY))
    with caplog.at_level(logging.WARNING, logger="app.auth.verify"), pytest.raises(MissingAuthHeaders):
        verifier.refuse_api_key("req-2")
    assert caplog.messages == [
        "auth refused: Authorization: Bearer is accepted on /v1/embeddings only; this endpoint is signed"
    ]
