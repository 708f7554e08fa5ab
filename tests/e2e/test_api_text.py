"""The text endpoint's validation."""

from __future__ import annotations

import pytest

from tests.support.api import call


@pytest.mark.parametrize("text", ["", "   "])
def test_embed_text_blank_is_422(service, text):
    status, body, _ = call(service.base, "/v1/embed/text", {"text": text})
    assert (status, body["error"]["code"]) == (422, "invalid_request")


def test_embed_text_longer_than_context_is_truncated_not_refused(service):
    status, body, _ = call(service.base, "/v1/embed/text", {"text": "many words " * 500})
    assert status == 200 and len(body["embedding"]) == 64


def test_embed_text_over_max_chars_is_422(service):
    status, body, _ = call(service.base, "/v1/embed/text", {"text": "x" * 10_001})
    assert (status, body["error"]["code"]) == (422, "invalid_request")


@pytest.mark.parametrize("raw", [b"{", b"[]", b'{"text": 5}', b"null"])
def test_malformed_json_is_422_with_error_body(service, raw):
    status, body, _ = call(service.base, "/v1/embed/text", {"text": "x"}, raw=raw)
    assert status == 422
    assert set(body["error"]) == {"code", "message"}


def test_unknown_route_has_error_body(service):
    status, body, _ = call(service.base, "/v1/nope")
    assert (status, body["error"]["code"]) == (404, "not_found")
