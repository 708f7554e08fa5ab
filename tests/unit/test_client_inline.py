"""Inline images: media-type sniffing and the data URIs the client sends."""

from __future__ import annotations

import base64

import pytest
from clip_client import ClipInvalidRequestError, data_uri
from clip_client.inline import file_data_uri, sniff_media_type

from tests.support.data import jpeg_bytes, png_rgba_bytes

WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\0" * 24


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (jpeg_bytes(16, 16), "image/jpeg"),
        (png_rgba_bytes(), "image/png"),
        (b"GIF89a\x01\x00\x01\x00", "image/gif"),
        (b"GIF87a\x01\x00\x01\x00", "image/gif"),
        (WEBP, "image/webp"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
        (b"<html><body>not an image</body></html>", None),
        (b"BM\x00\x00", None),
        (b"", None),
    ],
    ids=["jpeg", "png", "gif89", "gif87", "webp", "riff-wave", "html", "bmp", "empty"],
)
def test_inline_sniff_media_type(data, expected):
    assert sniff_media_type(data) == expected


def test_inline_data_uri_sniffs_and_round_trips():
    data = png_rgba_bytes()
    uri = data_uri(data)
    header, payload = uri.split(",", 1)
    assert header == "data:image/png;base64" and base64.b64decode(payload, validate=True) == data


@pytest.mark.parametrize(
    ("given", "expected"), [("image/JPEG", "image/jpeg"), ("image/jpg", "image/jpeg"), ("gif", "image/gif")]
)
def test_inline_data_uri_names_the_given_media_type(given, expected):
    assert data_uri(b"\xff\xd8\xff\xe0", given).startswith(f"data:{expected};base64,")


@pytest.mark.parametrize(
    ("data", "media_type", "says"),
    [
        (b"<html></html>", None, "not a JPEG, PNG, WebP or GIF image"),
        (b"", None, "(empty)"),
        (b"\xff\xd8\xff\xe0", "image/bmp", "media type 'image/bmp' is not one of"),
        (b"\xff\xd8\xff\xe0", "text/plain", "media type 'text/plain' is not one of"),
    ],
    ids=["html", "empty", "bmp-named", "text-named"],
)
def test_inline_data_uri_refuses_other_types_before_sending(data, media_type, says):
    with pytest.raises(ClipInvalidRequestError) as caught:
        data_uri(data, media_type)
    assert caught.value.code == "invalid_image" and says in caught.value.message and caught.value.status is None


async def test_inline_file_data_uri_reads_the_file(tmp_path):
    path = tmp_path / "cat.jpg"
    path.write_bytes(jpeg_bytes(20, 10, 3))
    assert await file_data_uri(path) == data_uri(jpeg_bytes(20, 10, 3))


async def test_inline_file_data_uri_missing_file_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        await file_data_uri(tmp_path / "missing.jpg")
