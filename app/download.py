"""Fetch image bytes from caller-supplied URLs, bounded in bytes, time and concurrency."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from yarl import URL

from app.errors import DownloadFailed, DownloadTimeout, ImageTooLarge, InvalidUrl

log = logging.getLogger("app.download")

USER_AGENT = "clip-embedding-service/1.0"
MAX_URL_LENGTH = 2048
_CHUNK = 64 * 1024


def parse_url(raw: str) -> URL:
    """Check the parts of a URL that need no network: scheme, host, credentials, length."""
    if len(raw) > MAX_URL_LENGTH:
        raise InvalidUrl(f"URL is longer than {MAX_URL_LENGTH} characters")
    try:
        url = URL(raw, encoded=False)
    except (ValueError, TypeError):
        raise InvalidUrl("URL cannot be parsed") from None
    if url.scheme not in ("http", "https"):
        raise InvalidUrl("only http and https URLs are accepted")
    if not url.host:
        raise InvalidUrl("URL has no host")
    if url.user is not None or url.password is not None:
        raise InvalidUrl("URLs with credentials are not accepted")
    return url


def make_session(connections: int) -> aiohttp.ClientSession:
    """Create the app's one HTTP session: no environment proxies, no transparent decompression."""
    connector = aiohttp.TCPConnector(limit=connections, ttl_dns_cache=None, use_dns_cache=False)
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        auto_decompress=False,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Accept": "image/*"},
    )


class ImageFetcher:
    """Download one image at a time per slot; at most `concurrency` downloads run process-wide."""

    def __init__(
        self, session: aiohttp.ClientSession, *, max_bytes: int, timeout_s: float, concurrency: int
    ) -> None:
        self._session = session
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(concurrency)

    async def fetch(self, raw_url: str) -> bytes:
        """Return the body of `raw_url`, or raise a download error."""
        url = parse_url(raw_url)
        async with self._slots:
            try:
                async with asyncio.timeout(self._timeout_s):
                    return await self._get(url)
            except TimeoutError:
                raise DownloadTimeout(f"download took longer than {self._timeout_s:g}s") from None
            except aiohttp.InvalidURL:
                raise InvalidUrl("URL cannot be fetched") from None
            except aiohttp.ClientError as exc:
                raise DownloadFailed(f"could not fetch image: {type(exc).__name__}") from None

    async def _get(self, url: URL) -> bytes:
        async with self._session.get(url, allow_redirects=True, max_redirects=3) as resp:
            if not 200 <= resp.status < 300:
                raise DownloadFailed(f"image server answered HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > self._max_bytes:
                raise ImageTooLarge(f"image is {resp.content_length} bytes, over {self._max_bytes}")
            body = bytearray()
            # Count while streaming: Content-Length may be missing or lie.
            async for chunk in resp.content.iter_chunked(_CHUNK):
                body += chunk
                if len(body) > self._max_bytes:
                    raise ImageTooLarge(f"image is over {self._max_bytes} bytes")
            return bytes(body)
