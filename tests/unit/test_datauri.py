"""Inline images: data URIs decoded under the byte limit, refused with the download errors' codes."""

from __future__ import annotations

import base64

import pytest

from app.errors import ImageTooLarge, InvalidImage, InvalidUrl, ServiceError
from app.fetch.datauri import decode_data_uri, is_data_uri
from tests.support.data import jpeg_bytes

PHOTO = jpeg_bytes(64, 48, 3)
B64 = base64.b64encode(PHOTO).decode()


@pytest.mark.parametrize(
    "uri",
    [
        f"data:image/jpeg;base64,{B64}",
        f"DATA:IMAGE/JPEG;BASE64,{B64}",
        f"data:image/png;base64,{B64}",  # the bytes are sniffed later, as a download's are
        f"data:image/jpeg;name=cat.jpg;base64,{B64}",
    ],
)
def test_decode_data_uri_returns_the_bytes(uri):
    assert is_data_uri(uri)
    assert decode_data_uri(uri, max_bytes=len(PHOTO)) == PHOTO


@pytest.mark.parametrize(
    ("uri", "error", "message"),
    [
        (f"data:image/jpeg,{B64}", InvalidUrl, "a data URI must be data:image/<jpeg|png|webp|gif>;base64,<data>"),
        ("data:image/jpeg;base64", InvalidUrl, "a data URI must be data:image/<jpeg|png|webp|gif>;base64,<data>"),
        (f"data:;base64,{B64}", InvalidUrl, "a data URI must be data:image/<jpeg|png|webp|gif>;base64,<data>"),
        (
            f"data:image/svg+xml;base64,{B64}",
            InvalidImage,
            "data URI media type 'image/svg+xml' is not one of image/gif, image/jpeg, image/png, image/webp",
        ),
        (
            f"data:text/html;base64,{B64}",
            InvalidImage,
            "data URI media type 'text/html' is not one of image/gif, image/jpeg, image/png, image/webp",
        ),
        *(
            (
                f"data:image/jpeg;base64,{payload}",
                InvalidUrl,
                "data URI payload is not valid base64 (standard alphabet, padded, no whitespace)",
            )
            for payload in (B64[:-1], B64[:40] + "\n" + B64[40:], B64.replace("+", "-"), "ü" * 8, "====")
        ),
        ("data:image/jpeg;base64,", InvalidImage, "data URI holds no bytes"),
    ],
)
def test_decode_data_uri_refuses(uri, error, message):
    with pytest.raises(ServiceError) as err:
        decode_data_uri(uri, max_bytes=len(PHOTO))
    assert (type(err.value), err.value.message) == (error, message)


def test_decode_data_uri_refuses_one_byte_over_the_limit():
    with pytest.raises(ImageTooLarge) as err:
        decode_data_uri(f"data:image/jpeg;base64,{B64}", max_bytes=len(PHOTO) - 1)
    assert err.value.message == f"data URI image is {len(PHOTO)} bytes, over {len(PHOTO) - 1}"


def test_decode_data_uri_refuses_a_huge_payload_before_decoding_it():
    # Not base64 at all: were it decoded first, the answer would be InvalidUrl.
    with pytest.raises(ImageTooLarge) as err:
        decode_data_uri("data:image/png;base64," + "!" * 4000, max_bytes=1024)
    assert err.value.message == "data URI image is about 2998 bytes, over 1024"


@pytest.mark.parametrize("url", ["https://example.com/a.jpg", "dat:x", "", "http://data:x"])
def test_is_data_uri_false_for_other_urls(url):
    assert not is_data_uri(url)
