"""Small JPEG thumbnails, made at index time so that a search needs neither the video nor the network."""

from __future__ import annotations

import asyncio
import io
import urllib.request
from pathlib import Path

from PIL import Image

from examples.visual_search.sources import Item

THUMB_SIZE = (240, 180)
_DOWNLOAD_TIMEOUT_S = 20
_MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
_PARALLEL_DOWNLOADS = 8


def write_thumbnail(data: bytes | Path, target: Path) -> None:
    """Save a thumbnail of an image (bytes or a file) as JPEG at `target`."""
    source = data if isinstance(data, Path) else io.BytesIO(data)
    with Image.open(source) as img:
        img.thumbnail(THUMB_SIZE)
        img.convert("RGB").save(target, "JPEG", quality=85)


def _fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "clip-visual-search-example"})
    with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
        return bytes(resp.read(_MAX_DOWNLOAD_BYTES))


async def make_thumbnails(pairs: list[tuple[Item, Path]]) -> list[bool]:
    """Write each item's thumbnail at its path (a URL item's image is downloaded); say which ones worked.

    A missing thumbnail does not fail the item: the page shows its name instead.
    """
    limit = asyncio.Semaphore(_PARALLEL_DOWNLOADS)

    def one(item: Item, target: Path) -> bool:
        try:
            write_thumbnail(item.path if item.path is not None else _fetch(str(item.url)), target)
        except (OSError, ValueError, Image.DecompressionBombError):
            return False
        return True

    async def bounded(item: Item, target: Path) -> bool:
        async with limit:
            return await asyncio.to_thread(one, item, target)

    return list(await asyncio.gather(*(bounded(item, target) for item, target in pairs)))
