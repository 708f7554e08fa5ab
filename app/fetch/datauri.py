"""Inline images: `data:image/<jpeg|png|webp|gif>;base64,…` URIs, decoded here and never fetched.

The bytes then follow the same rules as a download: at most MAX_IMAGE_SIZE_BYTES, then the same
decode checks (the container is sniffed from its magic bytes, as for a download whatever its
Content-Type says, so the media type named in the URI is a gate, not a promise).
"""

from __future__ import annotations

import base64
import binascii
import re

from app.errors import ImageTooLarge, InvalidImage, InvalidUrl

SCHEME = "data:"
MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
# data:[<media type>][;<parameter>=<value>]*;base64,<payload>; parameters (e.g. a name) are allowed and ignored.
_HEADER_RE = re.compile(r"data:([a-z0-9.+-]+/[a-z0-9.+-]+)((?:;[a-z0-9_.+-]+=[^;,]*)*);base64", re.IGNORECASE)
_SHAPE = "data:image/<jpeg|png|webp|gif>;base64,<data>"


def is_data_uri(url: str) -> bool:
    """Say whether `url` is a data URI (its scheme is `data`, any case)."""
    return url[: len(SCHEME)].lower() == SCHEME


def decode_data_uri(url: str, max_bytes: int) -> bytes:
    """Return the image bytes of a base64 data URI; raise InvalidUrl, InvalidImage or ImageTooLarge."""
    header, comma, payload = url.partition(",")
    match = _HEADER_RE.fullmatch(header)
    if not comma or match is None:
        raise InvalidUrl(f"a data URI must be {_SHAPE}")
    media = match.group(1).lower()
    if media not in MEDIA_TYPES:
        raise InvalidImage(f"data URI media type {media[:60]!r} is not one of {', '.join(sorted(MEDIA_TYPES))}")
    # Refused before decoding: 4 base64 characters carry 3 bytes, less at most 2 of padding.
    least = len(payload) // 4 * 3 - 2
    if least > max_bytes:
        raise ImageTooLarge(f"data URI image is about {least} bytes, over {max_bytes}")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidUrl("data URI payload is not valid base64 (standard alphabet, padded, no whitespace)") from None
    if len(data) > max_bytes:
        raise ImageTooLarge(f"data URI image is {len(data)} bytes, over {max_bytes}")
    if not data:
        raise InvalidImage("data URI holds no bytes")
    return data
