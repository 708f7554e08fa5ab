"""Attack suite, URL characters: a signature for one list of image URLs must not cover another.

The batch's payload id joins its URLs with a newline, and yarl drops a newline inside a URL: a batch
signed for [a, b] was accepted as the one URL "a\\nb". Every endpoint that takes image URLs refuses
a URL holding a control or invisible character (422 `invalid_url`) before the signature is checked.
"""

from __future__ import annotations

import json

import pytest
from clip_client.signing import (
    BATCH_PATH,
    EMBEDDINGS_PATH,
    IMAGE_PATH,
    batch_payload_id,
    body_payload_id,
    image_payload_id,
    signed_headers,
)

from app.legacy import LegacyHandler
from tests.support.api import SECRET, call
from tests.support.data import tiny_settings
from tests.support.fake_model import FakeEmbedder

FIX = "percent-encode it (e.g. %0A for a newline), or send each URL as its own item"


def test_batch_signed_for_two_urls_is_refused_as_one_url_joined_by_a_newline(service, image_server):
    first, second = image_server.url("img/photo0.jpg?batch-join=1"), image_server.url("img/photo1.jpg?batch-join=1")
    headers = signed_headers(SECRET, "POST", BATCH_PATH, batch_payload_id([first, second]))
    joined = {"image_urls": [f"{first}\n{second}"]}
    status, body, _ = call(service.base, BATCH_PATH, joined, secret=None, headers=headers)
    index = len(first)
    message = f"image_urls.0: the URL holds U+000A, an invisible or control character, at index {index}: {FIX}"
    assert (status, body) == (422, {"error": {"code": "invalid_url", "message": message}})
    assert image_server.count("/img/photo0.jpg?batch-join") == 0


def test_batch_signed_for_two_urls_is_accepted_as_sent(service, image_server):
    urls = [image_server.url("img/photo0.jpg"), image_server.url("img/photo1.jpg")]
    status, body, _ = call(service.base, BATCH_PATH, {"image_urls": urls})
    assert (status, body["succeeded"]) == (200, 2)


@pytest.mark.parametrize("char", ["\t", "\r", "\x00", "\u2028"], ids=["tab", "cr", "nul", "line-sep"])
def test_single_image_url_with_a_control_character_is_invalid_url(service, image_server, char):
    url = image_server.url("img/photo0.jpg") + char
    status, body, _ = call(service.base, IMAGE_PATH, {"image_url": url})
    assert (status, body["error"]["code"]) == (422, "invalid_url")
    assert body["error"]["message"].startswith(f"image_url: the URL holds U+{ord(char):04X}, ")


def test_single_image_url_refused_before_the_signature_is_checked(service):
    headers = signed_headers("wrong-secret", "POST", IMAGE_PATH, image_payload_id("x"))
    status, body, _ = call(
        service.base, IMAGE_PATH, {"image_url": "https://a.test/a\n.jpg"}, secret=None, headers=headers
    )
    assert (status, body["error"]["code"]) == (422, "invalid_url")


def _embeddings(service, body: dict) -> tuple[int, dict]:
    raw = json.dumps(body).encode()
    headers = signed_headers(SECRET, "POST", EMBEDDINGS_PATH, body_payload_id(raw))
    status, answer, _ = call(service.base, EMBEDDINGS_PATH, raw=raw, secret=None, headers=headers)
    return status, answer


def test_embeddings_image_input_with_a_newline_is_invalid_url(service, image_server):
    url = image_server.url("img/photo0.jpg")
    status, body = _embeddings(service, {"model": "clip-tiny", "modality": "image", "input": [url, f"{url}\n{url}"]})
    message = f"input: input[1]: the URL holds U+000A, an invisible or control character, at index {len(url)}: {FIX}"
    assert (status, body) == (422, {"error": {"code": "invalid_url", "message": message}})


def test_embeddings_text_input_may_hold_newlines(service):
    status, body = _embeddings(service, {"model": "clip-tiny", "input": ["a cat\non a mat", "\ttabbed"]})
    assert (status, len(body["data"])) == (200, 2)


async def test_legacy_job_url_with_a_newline_is_invalid_url():
    handler = LegacyHandler(tiny_settings(), FakeEmbedder())
    try:
        out = await handler.handle(
            {"input": {"image_url": "https://a.test/a.jpg\nb", "timestamp": 1, "signature": "x"}}
        )
    finally:
        await handler.aclose()
    message = f"the URL holds U+000A, an invisible or control character, at index 20: {FIX}"
    assert out == {"error": {"code": "invalid_url", "message": message}}
