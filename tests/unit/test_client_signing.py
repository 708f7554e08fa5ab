"""The payload ids of the batch, upload and OpenAI-style endpoints (clip_client.signing)."""

from __future__ import annotations

import hashlib

import pytest
from clip_client import signing
from clip_client.signing import (
    batch_payload_id,
    body_payload_id,
    canonical_message,
    canonical_parts,
    sign,
    text_batch_payload_id,
    text_payload_id,
    upload_payload_id,
)


def _hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_text_batch_payload_id_is_the_digest_list_of_the_texts():
    texts = ["a cat", "caf\u00e9"]
    expected = _hex((_hex(b"a cat") + "\n" + _hex("caf\u00e9".encode())).encode())
    assert text_batch_payload_id(texts) == expected


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (["a\nb", "c"], ["a", "b\nc"]),  # the same text once joined by newlines
        (["ab"], ["a", "b"]),
        ([""], []),
    ],
)
def test_text_batch_payload_id_tells_apart_batches_that_join_alike(first, second):
    assert text_batch_payload_id(first) != text_batch_payload_id(second)


def test_upload_payload_id_depends_on_the_order_of_the_parts():
    parts = [b"\xff\xd8one", b"\xff\xd8two"]
    assert upload_payload_id(parts) == _hex((_hex(parts[0]) + "\n" + _hex(parts[1])).encode())
    assert upload_payload_id(parts) != upload_payload_id(parts[::-1])


def test_body_payload_id_is_the_sha256_of_the_raw_body():
    assert body_payload_id(b'{"input": "a cat"}') == _hex(b'{"input": "a cat"}')


# Longer than one slice, with a four-byte character across the slices' border and a combining mark.
LONG_TEXT = "a" * (signing._SLICE_CHARS - 1) + "\U0001f600e\u0301" + "b" * 10


@pytest.mark.parametrize("text", ["", "a cat", "caf\u00e9", LONG_TEXT], ids=["empty", "ascii", "accent", "long"])
def test_text_payload_id_is_the_sha256_of_the_whole_utf8_text(text):
    assert text_payload_id(text) == _hex(text.encode("utf-8"))


@pytest.mark.parametrize(
    "urls",
    [["https://a.test/1.jpg"], ["https://a.test/1.jpg", "https://b.test/\u00e9.jpg"], [""]],
    ids=["1", "2", "blank"],
)
def test_batch_payload_id_is_the_sha256_of_the_urls_joined_by_newlines(urls):
    assert batch_payload_id(urls) == _hex("\n".join(urls).encode("utf-8"))


@pytest.mark.parametrize("nonce", [None, "n0nce-0123456789abcdef"])
def test_canonical_parts_join_to_the_canonical_message_and_sign_alike(nonce):
    parts = canonical_parts("post", "/v1/embed/image", "https://a.test/\u00e9.jpg", 1_700_000_000, nonce)
    message = canonical_message("post", "/v1/embed/image", "https://a.test/\u00e9.jpg", 1_700_000_000, nonce)
    assert "".join(parts) == message
    assert sign("k", [part.encode("utf-8") for part in parts]) == sign("k", message)
