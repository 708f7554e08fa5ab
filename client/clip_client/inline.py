"""Inline images: bytes sent as `data:image/<jpeg|png|webp|gif>;base64,…` URIs, never fetched by the service.

The media type is sniffed from the bytes' magic when not given; anything else is refused here,
before a request is made, with the service's own code for it (`invalid_image`).
"""

from __future__ import annotations

import asyncio
import base64
import os

from clip_client.codes import ErrorCode
from clip_client.errors import ClipInvalidRequestError

# The media types the service accepts in a data URI.
MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")
_ALIASES = {"image/jpg": "image/jpeg", "jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png"}
_ALIASES |= {"webp": "image/webp", "gif": "image/gif"}


def sniff_media_type(data: bytes) -> str | None:
    """Return the media type the bytes' magic says (one of MEDIA_TYPES), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _media_type(data: bytes, media_type: str | None) -> str:
    if media_type is None:
        sniffed = sniff_media_type(data)
        if sniffed is None:
            what = "empty" if not data else f"starting {data[:8]!r}"
            raise ClipInvalidRequestError(
                f"the bytes ({what}) are not a JPEG, PNG, WebP or GIF image", code=ErrorCode.INVALID_IMAGE
            )
        return sniffed
    name = media_type.strip().lower()
    name = _ALIASES.get(name, name)
    if name not in MEDIA_TYPES:
        raise ClipInvalidRequestError(
            f"media type {media_type!r} is not one of {', '.join(MEDIA_TYPES)}", code=ErrorCode.INVALID_IMAGE
        )
    return name


def data_uri(data: bytes, media_type: str | None = None) -> str:
    """Return `data` as a base64 data URI (the media type sniffed when not given)."""
    media = _media_type(data, media_type)
    return f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"


async def file_data_uri(path: str | os.PathLike[str]) -> str:
    """Read an image file (off the event loop) and return it as a data URI; OSError when unreadable."""
    data = await asyncio.to_thread(_read, os.fspath(path))
    return data_uri(data)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
