"""Fetch image bytes from caller-supplied URLs, bounded in bytes, time and concurrency.

Data URIs are not fetched: their bytes are inline (`app.fetch.datauri`), under the same byte limit.

Every hop (the URL and each redirect target) passes `UrlGuard.check_url` before a connection, and
the session's connector resolves host names only through the guard (see `app.fetch.urlguard`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import zlib

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from app.errors import DownloadFailed, DownloadRefused, DownloadTimeout, ImageTooLarge, InvalidUrl, ServiceError
from app.fetch.datauri import decode_data_uri, is_data_uri
from app.fetch.urlguard import GuardedResolver, Lookup, UrlGuard, make_guard
from app.settings import Settings

log = logging.getLogger("app.fetch.download")

USER_AGENT = "clip-embedding-service/1.0"
MAX_URL_LENGTH = 2048
MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# The image server's 4xx that mean "not now" rather than "no": answered as its 5xx are (502, retryable).
TRANSIENT_CLIENT_STATUSES = frozenset({408, 429})
_COMPRESSED = frozenset({"gzip", "x-gzip", "deflate"})
_CHUNK = 64 * 1024
# A connection attempt gives up after this long even when the download's deadline is longer (aiohttp's default).
CONNECT_TIMEOUT_S = 30.0


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


def make_session(connections: int, resolver: AbstractResolver) -> aiohttp.ClientSession:
    """Create the app's one HTTP session: guarded resolver, no proxies, no cookies, no transparent decompression.

    The session is shared by every caller, so it keeps no cookies: one caller's image server must not
    hand a cookie that goes out with another caller's request. Time is bounded by ImageFetcher's own
    deadline, so aiohttp's per-request timer is off (it cost a timer per download); a connection
    attempt still gives up after CONNECT_TIMEOUT_S.
    """
    connector = aiohttp.TCPConnector(limit=connections, resolver=resolver, ttl_dns_cache=None, use_dns_cache=False)
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Accept": "image/*"},
    )


def make_fetcher(settings: Settings, lookup: Lookup | None = None) -> ImageFetcher:
    """Build the fetcher the download settings describe, on a new guarded session; `aclose()` closes it.

    Call it inside the event loop that will use it: the session belongs to that loop.
    """
    guard = make_guard(settings, lookup)
    return ImageFetcher(
        make_session(settings.download_concurrency, GuardedResolver(guard)),
        guard,
        max_bytes=settings.max_image_size_bytes,
        timeout_s=settings.image_download_timeout_s,
        concurrency=settings.download_concurrency,
    )


def describe_client_error(exc: aiohttp.ClientError) -> str:
    """Say in words what went wrong talking to the image server (aiohttp's type names mean little to a caller)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS error: the image server's certificate is not valid for it"
    if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ServerFingerprintMismatch):
        return "TLS error"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "host not found"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _describe_os_error(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the image server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientConnectionResetError):
        return "connection reset"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the image server's body was cut short or malformed"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "the image server's answer is not valid HTTP"
    if isinstance(exc, aiohttp.ClientOSError):
        return _describe_os_error(exc)
    return "network error"


def _describe_os_error(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return "host not found"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError) or exc.errno == errno.ECONNRESET:
        return "connection reset"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "host unreachable"
    return "could not connect"


class ImageFetcher:
    """Download one image at a time per slot; at most `concurrency` downloads run process-wide."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        guard: UrlGuard,
        *,
        max_bytes: int,
        timeout_s: float,
        concurrency: int,
    ) -> None:
        self._session = session
        self._guard = guard
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(concurrency)

    async def fetch(self, raw_url: str) -> bytes:
        """Return the body of `raw_url` (a data URI's own bytes: never fetched), or raise a download error."""
        if is_data_uri(raw_url):
            # Decoded on the loop: base64 runs in C, far faster than the decode the bytes go to next.
            return decode_data_uri(raw_url, self._max_bytes)
        url = parse_url(raw_url)
        self._guard.check_url(url)
        async with self._slots:
            try:
                async with asyncio.timeout(self._timeout_s):
                    return await self._follow(url)
            except TimeoutError:
                raise DownloadTimeout(f"download took longer than {self._timeout_s:g}s") from None
            except aiohttp.InvalidURL:
                raise InvalidUrl("URL cannot be fetched") from None
            except aiohttp.ClientError as exc:
                raise DownloadFailed(f"could not fetch image: {describe_client_error(exc)}") from None

    async def aclose(self) -> None:
        """Close the HTTP session the fetcher downloads with."""
        await self._session.close()

    async def _follow(self, url: URL) -> bytes:
        """GET `url`, following up to MAX_REDIRECTS redirects by hand, each target checked again."""
        redirects = 0
        while True:
            try:
                if redirects:
                    self._guard.check_url(url)
                async with self._session.get(url, allow_redirects=False) as resp:
                    if resp.status not in REDIRECT_STATUSES:
                        return await self._read(resp)
                    if redirects == MAX_REDIRECTS:
                        break
                    redirects += 1
                    url = _redirect_target(url, resp.headers.get(aiohttp.hdrs.LOCATION))
            except ServiceError as exc:
                if not redirects:
                    raise
                raise type(exc)(f"redirect {redirects}: {exc.message}") from None
        raise DownloadFailed(f"more than {MAX_REDIRECTS} redirects")

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        if not 200 <= resp.status < 300:
            raise status_error(resp.status)
        encoding = resp.headers.get(aiohttp.hdrs.CONTENT_ENCODING, "identity").strip().lower() or "identity"
        if encoding != "identity" and encoding not in _COMPRESSED:
            raise DownloadFailed(f"image server sent an unsupported Content-Encoding {encoding[:40]!r}")
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding in _COMPRESSED else None
        if inflater is None and resp.content_length is not None and resp.content_length > self._max_bytes:
            raise ImageTooLarge(f"image is {resp.content_length} bytes, over {self._max_bytes}")
        if inflater is not None:
            return await self._read_inflated(resp, inflater, encoding)
        # Count while streaming: Content-Length may be missing or lie. A piece is what aiohttp has
        # buffered (under 1 MiB: it pauses reading past 128 KiB); the pieces are joined once at the
        # end (a growing bytearray copied each 1 MP photo two to three times over).
        pieces: list[bytes] = []
        size = 0
        async for piece in resp.content.iter_any():
            size += len(piece)
            self._check_size(size)
            pieces.append(piece)
        return b"".join(pieces)

    async def _read_inflated(self, resp: aiohttp.ClientResponse, inflater: zlib._Decompress, encoding: str) -> bytes:
        body = bytearray()
        # Counted after decompression: a small bomb must not inflate past the limit.
        async for chunk in resp.content.iter_chunked(_CHUNK):
            self._inflate(inflater, chunk, body)
        if not inflater.eof:
            raise DownloadFailed(f"{encoding} body is truncated")
        return bytes(body)

    def _inflate(self, inflater: zlib._Decompress, data: bytes, body: bytearray) -> None:
        """Decompress `data` into `body`, never producing more than one byte over the limit."""
        try:
            while data and not inflater.eof:
                body += inflater.decompress(data, self._max_bytes - len(body) + 1)
                self._check_size(len(body))
                data = inflater.unconsumed_tail
        except zlib.error:
            raise DownloadFailed("image body is not valid gzip/deflate data") from None

    def _check_size(self, size: int) -> None:
        if size > self._max_bytes:
            raise ImageTooLarge(f"image is over {self._max_bytes} bytes")


def status_error(status: int) -> DownloadFailed:
    """Return the error for a non-2xx answer: a 4xx is the caller's URL (final), anything else the host's fault."""
    message = f"image server answered HTTP {status}"
    if 400 <= status < 500 and status not in TRANSIENT_CLIENT_STATUSES:
        return DownloadRefused(message)
    return DownloadFailed(message)


def _redirect_target(base: URL, location: str | None) -> URL:
    if not location:
        raise DownloadFailed("Location header missing")
    try:
        target = base.join(URL(location))
    except (ValueError, TypeError):
        raise InvalidUrl("redirect Location cannot be parsed") from None
    return parse_url(str(target.with_fragment(None)))
