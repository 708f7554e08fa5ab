"""The payload ids of the batch, upload and OpenAI-style endpoints (clip_client.signing)."""

from __future__ import annotations

import hashlib

import pytest
from clip_client.signing import body_payload_id, text_batch_payload_id, upload_payload_id


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
