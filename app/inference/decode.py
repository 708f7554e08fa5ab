"""Decode untrusted image bytes into an RGB picture, within a pixel budget."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps

from app.errors import ImageTooLarge, InvalidImage

WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def sniff_format(data: bytes) -> str:
    """Name the container format from its magic bytes; refuse anything not on the allowlist."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    raise InvalidImage("not a JPEG, PNG, WebP or GIF image")


@contextmanager
def decode_errors(fmt: str) -> Iterator[None]:
    """Turn whatever opening or decoding an image raises into ImageTooLarge or InvalidImage.

    The warning filter makes Pillow's bomb warning raise inside open(); as catch_warnings is not
    thread-safe, open_checked also compares the size with Pillow's own limit.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (ImageTooLarge, InvalidImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image is too large to decode safely ({exc})") from None
    except MemoryError:
        raise ImageTooLarge("image is too large to decode") from None
    # Pillow raises OSError, ValueError, SyntaxError, struct.error...: any failure is a bad image.
    except Exception as exc:  # noqa: BLE001
        raise InvalidImage(f"could not decode {fmt} image: truncated or corrupt ({type(exc).__name__})") from None


def open_checked(data: bytes, fmt: str, max_pixels: int) -> Image.Image:
    """Read the header (no pixels yet) and refuse an image over the pixel budget; call inside decode_errors."""
    img: Image.Image = Image.open(io.BytesIO(data), formats=[fmt])
    width, height = img.size
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if width * height > limit:
        raise ImageTooLarge(f"image is {width}x{height} pixels, over the limit of {limit}")
    if width < 1 or height < 1:
        raise InvalidImage("image has no pixels")
    return img


def decode_image(data: bytes, *, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode the first frame to RGB, EXIF-oriented, transparency composited on white.

    With `draft_size`, a JPEG at least twice that size on its short side is decoded at a reduced
    scale (DCT scaling) that keeps its short side >= draft_size; otherwise it is decoded in full.
    """
    fmt = sniff_format(data)
    with decode_errors(fmt):
        img = open_checked(data, fmt, max_pixels)
        if draft_size and fmt == "JPEG" and min(img.size) >= 2 * draft_size:
            img.draft(None, (draft_size, draft_size))
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent pixels become white."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        scale = 1.0 if img.mode == "F" else 257.0
        arr = np.clip(np.asarray(img, dtype=np.float32) / scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")
