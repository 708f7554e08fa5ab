"""`/v1/embed/text-batch`: one result per text in input order, a bad text failing alone."""

from __future__ import annotations

import numpy as np
import pytest
from clip_client.signing import signed_headers, text_batch_payload_id

from tests.support.api import SECRET, call

PATH = "/v1/embed/text-batch"


def test_text_batch_equals_the_single_text_endpoint_in_order(service):
    texts = ["a photo of a cat", "two\nlines", "ünïcödé ✓", "a photo of a cat"]
    status, body, _ = call(service.base, PATH, {"texts": texts})
    assert status == 200
    assert ([r["index"] for r in body["results"]], body["succeeded"], body["failed"]) == ([0, 1, 2, 3], 4, 0)
    assert (body["dim"], body["model"]) == (64, "clip-tiny")
    for result, text in zip(body["results"], texts, strict=True):
        _, alone, _ = call(service.base, "/v1/embed/text", {"text": text})
        np.testing.assert_allclose(result["embedding"], alone["embedding"], atol=1e-6)


def test_text_batch_blank_and_too_long_texts_fail_alone(service):
    texts = ["", "a cat", "   ", "x" * 10_001, "a dog"]
    status, body, _ = call(service.base, PATH, {"texts": texts})
    assert status == 200
    errors = [r["error"] for r in body["results"]]
    assert errors == [
        {"code": "invalid_request", "message": "text is blank"},
        None,
        {"code": "invalid_request", "message": "text is blank"},
        {"code": "invalid_request", "message": "text is 10001 characters; at most 10000 are accepted"},
        None,
    ]
    assert (body["succeeded"], body["failed"]) == (2, 3)


@pytest.mark.parametrize("count", [17, 1000])
def test_text_batch_over_max_batch_size_is_422_naming_the_setting(service, count):
    status, body, _ = call(service.base, PATH, {"texts": ["a cat"] * count})
    message = f"texts holds {count} texts; at most MAX_BATCH_SIZE=16 are accepted per request"
    assert (status, body) == (422, {"error": {"code": "invalid_request", "message": message}})


@pytest.mark.parametrize("body", [{"texts": []}, {"texts": "a cat"}, {"texts": [1]}, {"texts": ["a"], "x": 1}, {}])
def test_text_batch_malformed_body_is_422(service, body):
    # Headers that pass the pre-check: the body is refused before the signature is compared.
    headers = signed_headers(SECRET, "POST", PATH, "not-the-payload")
    status, answer, _ = call(service.base, PATH, body, secret=None, headers=headers)
    assert (status, answer["error"]["code"]) == (422, "invalid_request")


def test_text_batch_signature_covers_each_text_boundary(service):
    # "a\nb" as one text and ["a", "b"] as two must not share a signature.
    headers = signed_headers(SECRET, "POST", PATH, text_batch_payload_id(["a", "b"]))
    status, body, _ = call(service.base, PATH, {"texts": ["a\nb"]}, secret=None, headers=headers)
    assert (status, body["error"]["code"]) == (401, "signature_mismatch")
