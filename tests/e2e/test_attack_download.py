"""Attack suite, downloading: lying Content-Length, oversized chunked and close-delimited bodies,
compressed bodies and gzip bombs, a server that trickles bytes, error statuses.

Fetcher-level tests run with the guard ON (a public host name routed to the hostile server); the
API-level ones use the core test service (ALLOW_PRIVATE_URLS=1), whose size and time rules still apply.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.errors import DownloadFailed, DownloadRefused, DownloadTimeout, ImageTooLarge
from scripts.procs import free_port
from tests.support.api import call
from tests.support.attack import PHOTO, PUBLIC_HOST, guarded_fetcher, public_dns
from tests.support.hostile import HostileServer
from tests.support.netmap import PUBLIC_V4, FakeDns

LIMIT = 64 * 1024
BIG = PHOTO * (LIMIT // len(PHOTO) + 2)  # just over LIMIT


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        server.files["photo.jpg"] = PHOTO
        server.files["big.jpg"] = BIG
        yield server


async def fetch(hostile: HostileServer, path: str, *, max_bytes: int = LIMIT, timeout_s: float = 3) -> bytes:
    dns, routes = public_dns(hostile)
    async with guarded_fetcher(dns, routes=routes, max_bytes=max_bytes, timeout_s=timeout_s) as fetcher:
        return await fetcher.fetch(f"http://{PUBLIC_HOST}/{path}")


async def test_fetch_reads_plain_image(hostile):
    assert await fetch(hostile, "img/photo.jpg") == PHOTO


async def test_fetch_lying_content_length_short_claim_is_download_failed(hostile):
    # The server claims 1000 bytes and sends 50 times more: the extra bytes are a protocol error.
    with pytest.raises(DownloadFailed) as err:
        await fetch(hostile, "lying/photo.jpg?claim=1000&repeat=50")
    assert err.value.message == "could not fetch image: the image server's answer is not valid HTTP"


async def test_fetch_lying_content_length_long_claim_is_download_failed(hostile):
    # The server claims more than it sends, then closes: the body is incomplete.
    with pytest.raises(DownloadFailed) as err:
        await fetch(hostile, "lying/photo.jpg?claim=60000&repeat=1")
    assert err.value.message == "could not fetch image: the image server's body was cut short or malformed"


async def test_fetch_content_length_over_limit_refused_before_reading(hostile):
    with pytest.raises(ImageTooLarge) as err:
        await fetch(hostile, "img/big.jpg")
    assert err.value.message == f"image is {len(BIG)} bytes, over {LIMIT}"


async def test_fetch_chunked_body_within_limit(hostile):
    assert len(await fetch(hostile, f"chunked?total={LIMIT}")) == LIMIT


async def test_fetch_chunked_oversized_body_is_image_too_large(hostile):
    with pytest.raises(ImageTooLarge) as err:
        await fetch(hostile, f"chunked?total={LIMIT * 64}")
    assert err.value.message == f"image is over {LIMIT} bytes"


async def test_fetch_unbounded_body_without_length_is_image_too_large(hostile):
    with pytest.raises(ImageTooLarge) as err:
        await fetch(hostile, "unbounded?chunks=2000")
    assert err.value.message == f"image is over {LIMIT} bytes"


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate"])
async def test_fetch_decompresses_encoded_body(hostile, encoding):
    assert await fetch(hostile, f"encoded/photo.jpg?enc={encoding}") == PHOTO


async def test_fetch_counts_compressed_body_after_decompression(hostile):
    # big.jpg gzips to far less than LIMIT, but it is over LIMIT once inflated.
    with pytest.raises(ImageTooLarge) as err:
        await fetch(hostile, "encoded/big.jpg?enc=gzip")
    assert err.value.message == f"image is over {LIMIT} bytes"


async def test_fetch_gzip_bomb_is_image_too_large(hostile):
    bomb = hostile.bomb(256 << 20)  # 256 MiB of zeros in ~250 KiB
    assert len(bomb) < 1 << 20
    with pytest.raises(ImageTooLarge) as err:
        await fetch(hostile, f"gzip-bomb?size={256 << 20}", max_bytes=1 << 20)
    assert err.value.message == f"image is over {1 << 20} bytes"


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, gzip", "identity, gzip"])
async def test_fetch_refuses_unsupported_content_encoding(hostile, encoding):
    with pytest.raises(DownloadFailed) as err:
        await fetch(hostile, f"encoded/photo.jpg?enc={encoding}")
    assert err.value.message == f"image server sent an unsupported Content-Encoding {encoding!r}"


async def test_fetch_truncated_gzip_is_download_failed(hostile):
    with pytest.raises(DownloadFailed) as err:
        await fetch(hostile, "encoded/photo.jpg?enc=gzip&cut=100")
    assert err.value.message == "gzip body is truncated"


async def test_fetch_corrupt_gzip_is_download_failed(hostile):
    with pytest.raises(DownloadFailed) as err:
        await fetch(hostile, "encoded/photo.jpg?enc=gzip&raw=1")
    assert err.value.message == "image body is not valid gzip/deflate data"


async def test_fetch_trickling_server_hits_total_timeout(hostile):
    # One byte per second of a 100,000-byte body: the total timeout ends it, not a read timeout.
    with pytest.raises(DownloadTimeout) as err:
        await fetch(hostile, "trickle?interval=1", max_bytes=1 << 20, timeout_s=1.5)
    assert err.value.message == "download took longer than 1.5s"


async def test_fetch_slow_headers_hit_total_timeout(hostile):
    with pytest.raises(DownloadTimeout):
        await fetch(hostile, "slow/photo.jpg?delay=3", timeout_s=0.5)


async def test_fetch_refused_connection_says_connection_refused():
    dns = FakeDns({PUBLIC_HOST: [PUBLIC_V4]})
    async with guarded_fetcher(dns, routes={PUBLIC_V4: free_port()}) as fetcher:  # nothing listens there
        with pytest.raises(DownloadFailed) as err:
            await fetcher.fetch(f"http://{PUBLIC_HOST}/photo.jpg")
    assert err.value.message == "could not fetch image: connection refused"


async def test_fetch_unknown_host_says_host_not_found():
    async with guarded_fetcher(FakeDns({})) as fetcher:  # every name is NXDOMAIN
        with pytest.raises(DownloadFailed) as err:
            await fetcher.fetch("http://no-such-host.test/photo.jpg")
    assert err.value.message == "could not fetch image: host not found"


@pytest.mark.parametrize(
    ("status", "refused"),
    [(400, True), (403, True), (404, True), (410, True), (408, False), (429, False), (500, False), (503, False)],
)
async def test_fetch_non_2xx_status_is_download_failed_refused_only_for_a_final_4xx(hostile, status, refused):
    with pytest.raises(DownloadFailed) as err:
        await fetch(hostile, f"status/{status}")
    assert err.value.message == f"image server answered HTTP {status}"
    assert err.value.code == "download_failed"
    assert isinstance(err.value, DownloadRefused) is refused


async def test_fetch_4xx_behind_a_redirect_is_refused(hostile):
    with pytest.raises(DownloadRefused) as err:
        await fetch(hostile, "hops/1?name=missing.jpg")
    assert err.value.message == "redirect 1: image server answered HTTP 404"


# --- through the API ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("gzip-bomb?size=67108864", 413, "image_too_large"),
        ("chunked?total=33554432", 413, "image_too_large"),
        ("lying/photo.jpg?claim=700&repeat=50", 502, "download_failed"),
        ("lying/photo.jpg?claim=60000&repeat=1", 502, "download_failed"),
        ("encoded/photo.jpg?enc=br", 502, "download_failed"),
        ("status/404", 422, "download_failed"),
        ("status/429", 502, "download_failed"),
        ("status/500", 502, "download_failed"),
        ("trickle?interval=1", 504, "download_timeout"),
    ],
)
def test_api_hostile_download_gets_json_error(service, hostile, path, status, code):
    got, body, _ = call(service.base, "/v1/embed/image", {"image_url": f"{hostile.base}/{path}"})
    assert (got, body["error"]["code"]) == (status, code)
    assert set(body["error"]) == {"code", "message"}
