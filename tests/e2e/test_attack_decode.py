"""Attack suite, decoding: formats outside the allowlist sent as .jpg, pixel bombs (PNG, JPEG, GIF
frames), truncated / empty / random bytes, and the edge photos that must decode to sensible RGB."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.errors import ImageTooLarge, InvalidImage
from app.inference.decode import decode_image
from tests.support.api import call
from tests.support.data import jpeg_bytes
from tests.support.hostile import HostileServer

EDGE = Path(__file__).resolve().parents[1] / "data" / "edge"
MAX_PIXELS = 40_000_000
NOT_ALLOWED = "not a JPEG, PNG, WebP or GIF image"


def _saved(fmt: str, source: Image.Image | None = None) -> bytes:
    buf = io.BytesIO()
    (source or Image.new("RGB", (32, 24), (200, 30, 30))).save(buf, fmt)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of zeros: a few KiB that would decode to width x height pixels."""
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims width x height."""
    data = bytearray(jpeg_bytes(64, 48))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif(screen: tuple[int, int], frames: list[tuple[int, int]]) -> bytes:
    """A GIF with a logical screen and frames of the given sizes (tiny LZW data each)."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff")
    for width, height in frames:
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return bytes(out + b"\x3b")


HOSTILE_FORMATS = {
    "html": b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
    "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<image href="file:///etc/passwd"/></svg>',
    "pdf": _saved("PDF"),
    "eps": _saved("EPS"),
    "tiff": _saved("TIFF"),
    "tiff-big-endian": b"MM\x00*" + _saved("TIFF")[4:],
    "bmp": _saved("BMP"),
    "ico": _saved("ICO"),
    "ppm": _saved("PPM"),
    "xml": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
    "json": b'{"image": "no"}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FORMATS))
def test_decode_refuses_format_outside_allowlist(name):
    with pytest.raises(InvalidImage) as err:
        decode_image(HOSTILE_FORMATS[name], max_pixels=MAX_PIXELS)
    assert err.value.message == NOT_ALLOWED


def test_decode_png_bomb_20000_square_is_image_too_large():
    bomb = png_bomb(20_000, 20_000)
    assert len(bomb) < 200_000
    with pytest.raises(ImageTooLarge) as err:
        decode_image(bomb, max_pixels=MAX_PIXELS)
    assert err.value.message.startswith("image is too large to decode safely (Image size (400000000 pixels)")


def test_decode_pixel_limit_is_checked_from_header():
    # 7000 x 7000 = 49 MP: under Pillow's own limits, over MAX_IMAGE_PIXELS.
    with pytest.raises(ImageTooLarge) as err:
        decode_image(png_bomb(7000, 7000), max_pixels=MAX_PIXELS)
    assert err.value.message == f"image is 7000x7000 pixels, over the limit of {MAX_PIXELS}"


@pytest.mark.parametrize(("limit", "ok"), [(64 * 48, True), (64 * 48 - 1, False)])
def test_decode_pixel_limit_edge(limit, ok):
    data = jpeg_bytes(64, 48)
    if ok:
        assert decode_image(data, max_pixels=limit).size == (64, 48)
    else:
        with pytest.raises(ImageTooLarge):
            decode_image(data, max_pixels=limit)


def test_decode_pillow_bomb_warning_is_error():
    # 10000 x 10000 is in Pillow's warning band (over MAX_IMAGE_PIXELS, under twice it).
    assert Image.MAX_IMAGE_PIXELS < 100_000_000 < 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLarge):
        decode_image(png_bomb(10_000, 10_000), max_pixels=10**9)


def test_decode_jpeg_header_claiming_65000_square_is_image_too_large():
    with pytest.raises(ImageTooLarge):
        decode_image(jpeg_claiming(65_000, 65_000), max_pixels=MAX_PIXELS)


@pytest.mark.parametrize(
    ("screen", "frames"),
    [((1, 1), [(20_000, 20_000)]), ((20_000, 20_000), [(1, 1)]), ((1, 1), [(7000, 7000)])],
    ids=["huge-first-frame", "huge-screen", "frame-over-limit"],
)
def test_decode_gif_with_huge_frame_is_image_too_large(screen, frames):
    with pytest.raises(ImageTooLarge):
        decode_image(gif(screen, frames), max_pixels=MAX_PIXELS)


def test_decode_gif_decodes_first_frame_only():
    # The second frame is a 20,000 x 20,000 bomb; only the first is ever decoded.
    img = decode_image(gif((1, 1), [(1, 1), (20_000, 20_000)]), max_pixels=MAX_PIXELS)
    assert (img.mode, img.size) == ("RGB", (1, 1))


def test_decode_animated_gif_equals_its_first_frame():
    data = (EDGE / "animated.gif").read_bytes()
    first = Image.open(io.BytesIO(data)).convert("RGB")
    assert np.array_equal(np.asarray(decode_image(data, max_pixels=MAX_PIXELS)), np.asarray(first))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_decode_truncated_image_is_invalid(fmt, keep):
    data = _saved(fmt, source=Image.open(io.BytesIO(jpeg_bytes(300, 200, 9))))
    with pytest.raises(InvalidImage) as err:
        decode_image(data[: int(len(data) * keep)], max_pixels=MAX_PIXELS)
    assert err.value.message.startswith(f"could not decode {fmt} image: truncated or corrupt (")


def test_decode_zero_bytes_is_invalid():
    with pytest.raises(InvalidImage) as err:
        decode_image(b"", max_pixels=MAX_PIXELS)
    assert err.value.message == NOT_ALLOWED


@pytest.mark.parametrize("seed", range(4))
def test_decode_random_bytes_are_invalid(seed):
    with pytest.raises(InvalidImage):
        decode_image(np.random.default_rng(seed).bytes(4096), max_pixels=MAX_PIXELS)


@pytest.mark.parametrize(
    "magic", [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\0\0\0\0WEBP"], ids=["jpeg", "png", "gif", "webp"]
)
def test_decode_magic_then_random_bytes_is_invalid(magic):
    with pytest.raises(InvalidImage):
        decode_image(magic + np.random.default_rng(7).bytes(4096), max_pixels=MAX_PIXELS)


def test_decode_png_with_bad_crc_is_invalid():
    data = bytearray(_saved("PNG"))
    data[29] ^= 0xFF  # inside the IHDR CRC
    with pytest.raises(InvalidImage):
        decode_image(bytes(data), max_pixels=MAX_PIXELS)


# --- the edge photos decode to sensible RGB ---------------------------------------------------

EDGE_SIZES = {
    "animated.gif": (14, 25),
    "camera-16bit.png": (128, 128),
    "camera-gray.png": (128, 128),
    "chelsea-palette.png": (150, 100),
    "chelsea-progressive.jpg": (451, 300),
    "chelsea.webp": (451, 300),
    "coffee-cmyk.jpg": (150, 100),
    "horse-rgba.png": (400, 328),
    "logo-rgba.png": (125, 125),
    "pixel-1x1.png": (1, 1),
    "rocket-exif-orientation6.jpg": (640, 427),  # stored 427 x 640, EXIF orientation 6
}


def edge(name: str) -> np.ndarray:
    return np.asarray(decode_image((EDGE / name).read_bytes(), max_pixels=MAX_PIXELS, draft_size=None)).astype(int)


@pytest.mark.parametrize("name", sorted(EDGE_SIZES))
def test_decode_edge_photo_is_rgb_of_expected_size(name):
    img = decode_image((EDGE / name).read_bytes(), max_pixels=MAX_PIXELS)
    assert (img.mode, img.size) == ("RGB", EDGE_SIZES[name])
    assert np.asarray(img).std() > 0 or name == "pixel-1x1.png"


def test_decode_edge_sixteen_bit_matches_eight_bit():
    assert np.abs(edge("camera-16bit.png") - edge("camera-gray.png")).mean() < 2


@pytest.mark.parametrize("name", ["chelsea-palette.png", "chelsea.webp"])
def test_decode_edge_chelsea_colours_match_jpeg(name):
    reference = edge("chelsea-progressive.jpg").mean(axis=(0, 1))
    assert np.abs(edge(name).mean(axis=(0, 1)) - reference).max() < 3


def test_decode_edge_cmyk_is_not_inverted():
    red, _, blue = edge("coffee-cmyk.jpg").mean(axis=(0, 1))
    assert red > blue + 50  # coffee is brown, not the blue of inverted CMYK


@pytest.mark.parametrize("name", ["horse-rgba.png", "logo-rgba.png"])
def test_decode_edge_transparent_corner_is_white(name):
    assert edge(name)[0, 0].tolist() == [255, 255, 255]


def test_decode_edge_single_pixel():
    assert edge("pixel-1x1.png").tolist() == [[[255, 0, 0]]]


def test_decode_edge_exif_orientation_applied():
    stored = np.asarray(Image.open(EDGE / "rocket-exif-orientation6.jpg").convert("RGB")).astype(int)
    assert np.abs(edge("rocket-exif-orientation6.jpg") - np.rot90(stored, k=-1)).mean() < 1


# --- through the API (sent as .jpg with Content-Type image/jpeg) -----------------------------


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        for name, data in HOSTILE_FORMATS.items():
            server.files[f"{name}.jpg"] = data
        server.files["bomb.jpg"] = png_bomb(20_000, 20_000)
        server.files["gif-bomb.jpg"] = gif((1, 1), [(20_000, 20_000)])
        server.files["empty.jpg"] = b""
        server.files["truncated.jpg"] = jpeg_bytes(300, 200, 9)[:700]
        yield server


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [(f"{name}.jpg", 422, "invalid_image") for name in ("html", "svg", "pdf", "eps", "tiff")]
    + [
        ("bomb.jpg", 413, "image_too_large"),
        ("gif-bomb.jpg", 413, "image_too_large"),
        ("empty.jpg", 422, "invalid_image"),
        ("truncated.jpg", 422, "invalid_image"),
    ],
)
def test_api_hostile_image_gets_json_error(service, hostile, name, status, code):
    got, body, _ = call(service.base, "/v1/embed/image", {"image_url": f"{hostile.base}/img/{name}"})
    assert (got, body["error"]["code"]) == (status, code)
    assert set(body["error"]) == {"code", "message"}
