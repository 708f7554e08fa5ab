"""Which images the engine's batched JPEG decoder takes (JPEG_DECODE=engine), read from the header alone.

Only what a GPU decoder handles like libjpeg does goes there: complete 8-bit baseline or extended
Huffman JPEGs, grey or YCbCr, with the usual chroma layouts. Everything else (PNG, WebP, GIF,
progressive, arithmetic-coded, CMYK, RGB-coded, odd sampling, a stream without its end marker) stays
with the decode threads' decoder (app.inference.decode), which gives it today's pixels or today's error.
Today's checks run first either way: the format allowlist, the pixel budget and Pillow's bomb limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import ExifTags

from app.inference.decode import decode_errors, open_checked, sniff_format
from app.inference.payload import EncodedImage, ImageHeader

_EOI = b"\xff\xd9"
_SOS = 0xDA
_APP14 = 0xEE
_SEQUENTIAL_HUFFMAN = (0xC0, 0xC1)  # baseline, extended sequential
# Start-of-frame markers: C0..CF but for DHT (C4), JPG (C8) and DAC (CC).
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Luma sampling factors (h, v) with 1x1 chroma: 4:4:4, 4:2:2, 4:4:0, 4:2:0, 4:1:1, 4:1:0.
_LUMA_SAMPLING = frozenset({(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (4, 2)})
_RGB_IDS = (ord("R"), ord("G"), ord("B"))


@dataclass(frozen=True, slots=True)
class Frame:
    """What a JPEG's markers before its first scan say about how it is coded."""

    marker: int  # the SOFn marker's second byte
    precision: int
    components: tuple[tuple[int, int, int], ...]  # (id, h, v) per component
    adobe_transform: int | None = None  # APP14 "Adobe": 0 = not YCbCr, 1 = YCbCr, 2 = YCCK


def read_frame(data: bytes) -> Frame | None:
    """Walk the markers up to the first scan; return the frame header, or None if the stream is not well formed."""
    pos, size = 2, len(data)
    frame: Frame | None = None
    adobe: int | None = None
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(body) != length - 2:
            return None
        if marker == _SOS:
            return Frame(frame.marker, frame.precision, frame.components, adobe) if frame else None
        if marker in _FRAMES and len(body) >= 6:
            count = body[5]
            parts = body[6 : 6 + 3 * count]
            if len(parts) != 3 * count:
                return None
            components = tuple((parts[i], parts[i + 1] >> 4, parts[i + 1] & 15) for i in range(0, len(parts), 3))
            frame = Frame(marker, body[0], components)
        elif marker == _APP14 and body.startswith(b"Adobe") and len(body) >= 12:
            adobe = body[11]
        pos += 2 + length
    return None


def engine_decodes(frame: Frame) -> bool:
    """Say whether a GPU decoder decodes this frame as libjpeg does."""
    if frame.marker not in _SEQUENTIAL_HUFFMAN or frame.precision != 8:
        return False
    if len(frame.components) == 1:
        return True
    if len(frame.components) != 3 or frame.adobe_transform == 0:
        return False
    ids = tuple(c[0] for c in frame.components)
    luma, *chroma = ((h, v) for _, h, v in frame.components)
    return ids != _RGB_IDS and luma in _LUMA_SAMPLING and all(c == (1, 1) for c in chroma)


def engine_jpeg(data: bytes, *, max_pixels: int) -> EncodedImage | None:
    """Return the image for the engine to decode, or None when the decode threads must decode it.

    Raises today's errors for what fails today's checks: InvalidImage, ImageTooLarge.
    """
    fmt = sniff_format(data)
    if fmt != "JPEG" or not data.endswith(_EOI):
        return None
    frame = read_frame(data)
    if frame is None or not engine_decodes(frame):
        return None
    with decode_errors(fmt):
        img = open_checked(data, fmt, max_pixels)
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    width, height = img.size
    return EncodedImage(data, ImageHeader(width, height, orientation if orientation in range(1, 9) else 1))
