"""Which images the engine's batched JPEG decoder takes: read from the header, after today's checks."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from PIL import Image

from app.errors import ImageTooLarge, InvalidImage
from app.inference.jpeg_route import engine_jpeg, read_frame
from app.inference.payload import ImageHeader
from tests.support.photos import photo, photo_jpeg

EDGE = Path(__file__).resolve().parents[1] / "data" / "edge"
MAX_PIXELS = 40_000_000


def _marker_patched(data: bytes, find: bytes, replace: bytes) -> bytes:
    at = data.index(find)
    return data[:at] + replace + data[at + len(replace) :]


def _with_exif_orientation(data: bytes, orientation: int) -> bytes:
    img = Image.open(io.BytesIO(data))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("rocket-exif-orientation6.jpg", ImageHeader(427, 640, 6)),
        ("chelsea-progressive.jpg", None),  # progressive: the decode threads
        ("coffee-cmyk.jpg", None),  # CMYK (Adobe, 4 components)
        ("chelsea.webp", None),
        ("horse-rgba.png", None),
        ("animated.gif", None),
    ],
)
def test_engine_jpeg_routes_edge_images(name, header):
    encoded = engine_jpeg((EDGE / name).read_bytes(), max_pixels=MAX_PIXELS)
    assert (encoded.header if encoded else None) == header


@pytest.mark.parametrize(
    "save",
    [{}, {"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2}],
    ids=["default", "444", "422", "420"],
)
def test_engine_jpeg_takes_baseline_ycbcr_with_usual_sampling(save):
    data = photo_jpeg(120, 80, seed=1, **save)
    encoded = engine_jpeg(data, max_pixels=MAX_PIXELS)
    assert encoded is not None and encoded.data is data and encoded.header == ImageHeader(120, 80, 1)


def test_engine_jpeg_takes_greyscale():
    buf = io.BytesIO()
    photo(50, 40).convert("L").save(buf, "JPEG")
    assert engine_jpeg(buf.getvalue(), max_pixels=MAX_PIXELS) == engine_jpeg(buf.getvalue(), max_pixels=MAX_PIXELS)
    assert engine_jpeg(buf.getvalue(), max_pixels=MAX_PIXELS).header == ImageHeader(50, 40, 1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_engine_jpeg_reads_the_exif_orientation(orientation):
    data = _with_exif_orientation(photo_jpeg(60, 40), orientation)
    assert engine_jpeg(data, max_pixels=MAX_PIXELS).header == ImageHeader(60, 40, orientation)


@pytest.mark.parametrize(
    ("why", "data"),
    [
        ("truncated: no end marker", photo_jpeg(64, 48)[:-300]),
        ("arithmetic coding (SOF9)", _marker_patched(photo_jpeg(64, 48), b"\xff\xc0", b"\xff\xc9")),
        ("lossless (SOF3)", _marker_patched(photo_jpeg(64, 48), b"\xff\xc0", b"\xff\xc3")),
        ("12-bit samples", _marker_patched(photo_jpeg(64, 48), b"\xff\xc0\x00\x11\x08", b"\xff\xc0\x00\x11\x0c")),
        (
            "RGB-coded (component ids R, G, B)",
            _marker_patched(photo_jpeg(64, 48), b"\x01\x22\x00\x02\x11\x01\x03", b"R\x22\x00G\x11\x01B"),
        ),
        (
            "Adobe marker: not YCbCr",
            b"\xff\xd8\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00" + photo_jpeg(64, 48)[2:],
        ),
        ("no frame before the scan", b"\xff\xd8" + photo_jpeg(64, 48)[photo_jpeg(64, 48).index(b"\xff\xda") :]),
    ],
)
def test_engine_jpeg_leaves_what_a_gpu_decoder_may_not_decode_as_libjpeg_to_the_decode_threads(why, data):
    assert engine_jpeg(data, max_pixels=MAX_PIXELS) is None, why


def test_engine_jpeg_leaves_odd_chroma_sampling_to_the_decode_threads():
    data = photo_jpeg(64, 48, subsampling=2)
    frame = read_frame(data)
    assert frame is not None and [c[1:] for c in frame.components] == [(2, 2), (1, 1), (1, 1)]
    # Chroma sampled twice as densely as luma: legal JPEG, not a layout nvJPEG names.
    odd = _marker_patched(data, b"\x01\x22\x00\x02\x11\x01", b"\x01\x11\x00\x02\x22\x01")
    assert engine_jpeg(odd, max_pixels=MAX_PIXELS) is None


def test_engine_jpeg_applies_the_pixel_budget_before_any_decode():
    data = bytearray(photo_jpeg(64, 48))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65_000, 65_000)
    with pytest.raises(ImageTooLarge):
        engine_jpeg(bytes(data), max_pixels=MAX_PIXELS)
    with pytest.raises(ImageTooLarge, match="over the limit of 3000"):
        engine_jpeg(photo_jpeg(64, 48), max_pixels=3000)


def test_engine_jpeg_refuses_formats_outside_the_allowlist():
    buf = io.BytesIO()
    photo(16, 16).save(buf, "BMP")
    with pytest.raises(InvalidImage, match="not a JPEG, PNG, WebP or GIF image"):
        engine_jpeg(buf.getvalue(), max_pixels=MAX_PIXELS)


def test_engine_jpeg_refuses_a_corrupt_header_as_the_decode_threads_do():
    data = photo_jpeg(64, 48)
    sof = data.index(b"\xff\xc0")
    broken = data[: sof + 4] + b"\x08\x00\x00\x00\x00" + data[sof + 9 :]  # a frame of 0 x 0 pixels
    with pytest.raises(InvalidImage):
        engine_jpeg(broken, max_pixels=MAX_PIXELS)
