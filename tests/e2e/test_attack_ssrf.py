"""Attack suite, fetching: every non-public address class by IP literal, by host name and behind a
redirect, odd IPv4 spellings, schemes, credentials, ports, redirects, DNS rebinding, proxies.

The guard is ON (ALLOW_PRIVATE_URLS=0) unless a test says otherwise; host names resolve through an
injected `FakeDns`; a `victim` server listens on a refused address and must never see a connection.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from app.errors import DownloadFailed, ImageTooLarge, InvalidUrl, UrlNotAllowed
from app.fetch.download import USER_AGENT
from app.fetch.urlguard import address_class, host_allowed
from tests.support.api import call
from tests.support.attack import PHOTO, PUBLIC_HOST, guarded_fetcher, public_dns
from tests.support.data import tiny_settings
from tests.support.hostile import HostileServer
from tests.support.netmap import PUBLIC_V4, PUBLIC_V6, FakeDns, RebindingDns
from tests.support.service import RunningService, run_service

# (address, the class the guard names) for every class the issue lists.
NON_PUBLIC = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "shared (CGNAT)"),
    ("100.127.255.254", "shared (CGNAT)"),
    ("169.254.169.254", "link-local"),
    ("169.254.0.1", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.0.8", "reserved"),
    ("198.18.0.1", "reserved"),
    ("192.0.2.1", "documentation"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "private"),
    ("fd12:3456:789a::1", "private"),
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("2001::1", "reserved"),
    ("::ffff:127.0.0.1", "loopback inside IPv6"),
    ("::ffff:10.0.0.1", "private inside IPv6"),
    ("::ffff:169.254.169.254", "link-local inside IPv6"),
    ("2002:7f00:1::", "loopback inside IPv6"),
    ("2002:a9fe:a9fe::1", "link-local inside IPv6"),
    ("2002:c0a8:101::", "private inside IPv6"),
    ("64:ff9b::7f00:1", "loopback inside IPv6"),
    ("64:ff9b::a9fe:a9fe", "link-local inside IPv6"),
    ("64:ff9b::a00:1", "private inside IPv6"),
    ("64:ff9b:1::a00:1", "reserved"),
    ("::127.0.0.1", "IPv4-compatible IPv6 (deprecated)"),
]
NON_PUBLIC_IDS = [a for a, _ in NON_PUBLIC]
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    PUBLIC_V4,
    "11.0.0.1",
    "100.63.255.255",
    "100.128.0.1",
    "172.15.255.255",
    "172.32.0.1",
    "169.253.255.255",
    "192.169.0.1",
    "223.255.255.254",
    PUBLIC_V6,
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "2002:808:808::",
    "64:ff9b::808:808",
]
ODD_IPV4 = [
    "2130706433",
    "0177.0.0.1",
    "127.1",
    "0x7f.0.0.1",
    "0x7f000001",
    "017700000001",
    "127.0.0.1.",
    "127.000.000.001",
    "0x7f.1",
    "1.2.3.4.5",
    "3232235777",
]


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    """The "public" web server: PUBLIC_HOST's connections are routed to it."""
    with HostileServer() as server:
        server.files["photo.jpg"] = PHOTO
        yield server


@pytest.fixture()
def victim() -> Iterator[HostileServer]:
    """A server on a refused address (127.0.0.1) that must never see a connection."""
    with HostileServer() as server:
        server.files["secret.jpg"] = PHOTO
        yield server


def url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# --- the address classifier ------------------------------------------------------------------


@pytest.mark.parametrize(("address", "kind"), NON_PUBLIC, ids=NON_PUBLIC_IDS)
def test_address_class_names_non_public_address(address, kind):
    assert address_class(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize("address", PUBLIC)
def test_address_class_accepts_public_address(address):
    assert address_class(ipaddress.ip_address(address)) is None


def test_address_class_strips_ipv6_zone():
    assert address_class(ipaddress.ip_address("fe80::1%eth0")) == "link-local"


# --- every class by IP literal, by host name, behind a redirect -------------------------------


@pytest.mark.parametrize(("address", "kind"), NON_PUBLIC, ids=NON_PUBLIC_IDS)
async def test_fetch_refuses_ip_literal(address, kind):
    dns = FakeDns()
    async with guarded_fetcher(dns) as fetcher:
        with pytest.raises(UrlNotAllowed) as err:
            await fetcher.fetch(f"http://{url_host(address)}/latest/meta-data/")
    assert err.value.message.endswith(f"is not public ({kind})")
    assert dns.lookups == []


@pytest.mark.parametrize(("address", "kind"), NON_PUBLIC, ids=NON_PUBLIC_IDS)
async def test_fetch_refuses_hostname_resolving_to(address, kind):
    dns = FakeDns({"target.test": [address]})
    async with guarded_fetcher(dns) as fetcher:
        with pytest.raises(UrlNotAllowed) as err:
            await fetcher.fetch("http://target.test/img/photo.jpg")
    assert err.value.message == "host 'target.test' resolves to a non-public address"
    assert dns.lookups == ["target.test"]


@pytest.mark.parametrize(("address", "kind"), NON_PUBLIC, ids=NON_PUBLIC_IDS)
async def test_fetch_refuses_redirect_to_ip_literal(hostile, address, kind):
    dns, routes = public_dns(hostile)
    target = quote(f"http://{url_host(address)}/latest/meta-data/", safe="")
    async with guarded_fetcher(dns, routes=routes) as fetcher:
        with pytest.raises(UrlNotAllowed) as err:
            await fetcher.fetch(f"http://{PUBLIC_HOST}/redirect?to={target}")
    assert err.value.message.startswith("redirect 1: address ")
    assert dns.lookups == [PUBLIC_HOST]


@pytest.mark.parametrize(("address", "kind"), NON_PUBLIC, ids=NON_PUBLIC_IDS)
async def test_fetch_refuses_redirect_to_hostname_resolving_to(hostile, address, kind):
    dns, routes = public_dns(hostile, {"inner.test": [address]})
    async with guarded_fetcher(dns, routes=routes) as fetcher:
        with pytest.raises(UrlNotAllowed) as err:
            await fetcher.fetch(f"http://{PUBLIC_HOST}/redirect?to=http%3A%2F%2Finner.test%2Fx")
    assert err.value.message == "redirect 1: host 'inner.test' resolves to a non-public address"
    assert dns.lookups == [PUBLIC_HOST, "inner.test"]


# --- a real server on a refused address never sees a connection ------------------------------


def victim_url(victim: HostileServer, host: str) -> str:
    return f"http://{host}:{victim.port}/img/secret.jpg"


async def test_fetch_loopback_literal_never_connects(victim):
    async with guarded_fetcher(FakeDns(), extra_ports=(victim.port,)) as fetcher:
        with pytest.raises(UrlNotAllowed):
            await fetcher.fetch(victim_url(victim, "127.0.0.1"))
    assert victim.connections == 0


@pytest.mark.parametrize("address", ["127.0.0.1", "::ffff:127.0.0.1", "2002:7f00:1::", "64:ff9b::7f00:1"])
async def test_fetch_hostname_to_loopback_never_connects(victim, address):
    dns = FakeDns({"victim.test": [address]})
    async with guarded_fetcher(dns, extra_ports=(victim.port,)) as fetcher:
        with pytest.raises(UrlNotAllowed):
            await fetcher.fetch(victim_url(victim, "victim.test"))
    assert victim.connections == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "victim.test", "2130706433", "127.1"])
async def test_fetch_redirect_to_loopback_never_connects(hostile, victim, host):
    dns, routes = public_dns(hostile, {"victim.test": ["127.0.0.1"]})
    target = quote(victim_url(victim, host), safe="")
    async with guarded_fetcher(dns, routes=routes, extra_ports=(victim.port,)) as fetcher:
        with pytest.raises(UrlNotAllowed):
            await fetcher.fetch(f"http://{PUBLIC_HOST}/redirect?to={target}")
    assert victim.connections == 0


@pytest.mark.parametrize("order", ["public-first", "private-first"])
async def test_fetch_refuses_host_with_public_and_private_address(hostile, victim, order):
    answer = [PUBLIC_V4, "127.0.0.1"] if order == "public-first" else ["127.0.0.1", PUBLIC_V4]
    dns, routes = public_dns(hostile, {"mixed.test": answer})
    async with guarded_fetcher(dns, routes=routes, extra_ports=(victim.port,)) as fetcher:
        with pytest.raises(UrlNotAllowed) as err:
            await fetcher.fetch(victim_url(victim, "mixed.test"))
    assert err.value.message == "host 'mixed.test' resolves to a non-public address"
    assert victim.connections == 0


async def test_fetch_dns_rebinding_connects_to_checked_address(hostile, victim):
    # First answer public (checked, then used), any later answer loopback: one lookup only.
    dns = RebindingDns({"rebind.test": [[PUBLIC_V4], ["127.0.0.1"]]})
    url = f"http://rebind.test:{victim.port}/img/photo.jpg"
    async with guarded_fetcher(dns, routes={PUBLIC_V4: hostile.port}, extra_ports=(victim.port,)) as fetcher:
        assert await fetcher.fetch(url) == PHOTO
    assert dns.lookups == ["rebind.test"]
    assert victim.connections == 0


async def test_fetch_dns_rebinding_refuses_private_first_answer(hostile, victim):
    dns = RebindingDns({"rebind.test": [["127.0.0.1"], [PUBLIC_V4]]})
    async with guarded_fetcher(dns, routes={PUBLIC_V4: hostile.port}, extra_ports=(victim.port,)) as fetcher:
        with pytest.raises(UrlNotAllowed):
            await fetcher.fetch(victim_url(victim, "rebind.test"))
    assert victim.connections == 0


async def test_fetch_ignores_environment_proxies(hostile, victim, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, victim.base)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    dns, routes = public_dns(hostile)
    async with guarded_fetcher(dns, routes=routes) as fetcher:
        assert await fetcher.fetch(f"http://{PUBLIC_HOST}/img/photo.jpg") == PHOTO
    assert victim.connections == 0


async def test_fetch_sends_fixed_user_agent_and_identity_encoding(hostile):
    dns, routes = public_dns(hostile)
    async with guarded_fetcher(dns, routes=routes) as fetcher:
        await fetcher.fetch(f"http://{PUBLIC_HOST}/img/photo.jpg?ua")
    sent = hostile.headers_seen[-1]
    assert (sent["User-Agent"], sent["Accept-Encoding"]) == (USER_AGENT, "identity")


async def test_fetch_never_sends_a_cookie_an_image_server_set(hostile):
    # One session serves every caller: a cookie kept from one caller's URL would go out with another's.
    dns, routes = public_dns(hostile)
    async with guarded_fetcher(dns, routes=routes) as fetcher:
        await fetcher.fetch(f"http://{PUBLIC_HOST}/cookie/photo.jpg")
        assert await fetcher.fetch(f"http://{PUBLIC_HOST}/img/photo.jpg?after-cookie") == PHOTO
    sent = hostile.headers_seen[-1]
    assert "Cookie" not in sent and "cookie" not in sent


# --- odd IPv4 spellings, schemes, credentials, ports, length ---------------------------------


@pytest.mark.parametrize("allow_private", [False, True], ids=["guarded", "private-allowed"])
@pytest.mark.parametrize("host", ODD_IPV4)
async def test_fetch_refuses_odd_ipv4_spelling(host, allow_private):
    dns = FakeDns({host: ["127.0.0.1"]})
    async with guarded_fetcher(dns, allow_private=allow_private) as fetcher:
        with pytest.raises(UrlNotAllowed) as err:
            await fetcher.fetch(f"http://{host}/img/photo.jpg")
    assert err.value.message == f"host {host!r} is not a canonical IPv4 address; write it as a.b.c.d"
    assert dns.lookups == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        "gopher://127.0.0.1:70/_GET%20/",
        "ftp://cdn.test/photo.jpg",
        "javascript:alert(1)",
        "dict://127.0.0.1:11211/stats",
        "ws://cdn.test/socket",
        "//cdn.test/photo.jpg",
    ],
)
async def test_fetch_refuses_scheme(url):
    dns = FakeDns({PUBLIC_HOST: [PUBLIC_V4]})
    async with guarded_fetcher(dns) as fetcher:
        with pytest.raises(InvalidUrl) as err:
            await fetcher.fetch(url)
    assert err.value.message == "only http and https URLs are accepted"
    assert dns.lookups == []


async def test_fetch_takes_a_data_uri_inline_without_a_lookup():
    dns = FakeDns({PUBLIC_HOST: [PUBLIC_V4]})
    async with guarded_fetcher(dns) as fetcher:
        assert await fetcher.fetch("data:image/jpeg;base64," + base64.b64encode(PHOTO).decode()) == PHOTO
    assert dns.lookups == []


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pass@cdn.test/photo.jpg",
        "http://user@cdn.test/photo.jpg",
        "http://:pass@cdn.test/photo.jpg",
        "http://cdn.test@127.0.0.1/photo.jpg",
        "http://cdn.test:80@169.254.169.254/",
        "https://admin:admin@cdn.test/",
    ],
)
async def test_fetch_refuses_userinfo(url):
    dns = FakeDns({PUBLIC_HOST: [PUBLIC_V4]})
    async with guarded_fetcher(dns) as fetcher:
        with pytest.raises(InvalidUrl) as err:
            await fetcher.fetch(url)
    assert err.value.message == "URLs with credentials are not accepted"
    assert dns.lookups == []


@pytest.mark.parametrize("port", [0, 22, 25, 6379, 8000, 8080, 9200, 65535])
async def test_fetch_refuses_other_port(port):
    dns = FakeDns({PUBLIC_HOST: [PUBLIC_V4]})
    async with guarded_fetcher(dns) as fetcher:
        with pytest.raises(InvalidUrl) as err:
            await fetcher.fetch(f"http://{PUBLIC_HOST}:{port}/photo.jpg")
    assert err.value.message == f"port {port} is not allowed (allowed: 80, 443; see ALLOWED_PORTS)"
    assert dns.lookups == []


async def test_fetch_allows_port_listed_in_allowed_ports(hostile):
    dns, routes = public_dns(hostile)
    async with guarded_fetcher(dns, routes=routes, extra_ports=(8080,)) as fetcher:
        assert await fetcher.fetch(f"http://{PUBLIC_HOST}:8080/img/photo.jpg") == PHOTO


@pytest.mark.parametrize("url", ["http://ex ample.test/x", "http://a..b/x", "http://-a.test/x", "http://a_b!.test/x"])
async def test_fetch_refuses_malformed_host_name(url):
    dns = FakeDns()
    async with guarded_fetcher(dns) as fetcher:
        with pytest.raises(InvalidUrl):
            await fetcher.fetch(url)
    assert dns.lookups == []


async def test_fetch_refuses_url_over_2048_characters(hostile):
    dns, routes = public_dns(hostile)
    base = f"http://{PUBLIC_HOST}/img/photo.jpg?pad="
    async with guarded_fetcher(dns, routes=routes) as fetcher:
        assert await fetcher.fetch(base + "a" * (2048 - len(base))) == PHOTO
        with pytest.raises(InvalidUrl) as err:
            await fetcher.fetch(base + "a" * (2049 - len(base)))
    assert err.value.message == "URL is longer than 2048 characters"


@pytest.mark.parametrize("answer", [[], None], ids=["no-addresses", "nxdomain"])
async def test_fetch_unresolvable_host_is_download_failed(answer):
    dns = FakeDns({} if answer is None else {"gone.test": answer})
    async with guarded_fetcher(dns) as fetcher:
        with pytest.raises(DownloadFailed):
            await fetcher.fetch("http://gone.test/photo.jpg")


# --- redirects -------------------------------------------------------------------------------


async def test_fetch_follows_three_redirects(hostile):
    dns, routes = public_dns(hostile)
    async with guarded_fetcher(dns, routes=routes) as fetcher:
        assert await fetcher.fetch(f"http://{PUBLIC_HOST}/hops/3") == PHOTO


async def test_fetch_refuses_chain_of_four_redirects(hostile):
    dns, routes = public_dns(hostile)
    before = len(hostile.requests)
    async with guarded_fetcher(dns, routes=routes) as fetcher:
        with pytest.raises(DownloadFailed) as err:
            await fetcher.fetch(f"http://{PUBLIC_HOST}/hops/4")
    assert err.value.message == "more than 3 redirects"
    assert hostile.requests[before:] == ["/hops/4", "/hops/3", "/hops/2", "/hops/1"]


async def test_fetch_refuses_redirect_loop(hostile):
    dns, routes = public_dns(hostile)
    before = len(hostile.requests)
    async with guarded_fetcher(dns, routes=routes) as fetcher:
        with pytest.raises(DownloadFailed) as err:
            await fetcher.fetch(f"http://{PUBLIC_HOST}/loop")
    assert err.value.message == "more than 3 redirects"
    assert hostile.requests[before:] == ["/loop"] * 4


async def test_fetch_refuses_redirect_without_location(hostile):
    dns, routes = public_dns(hostile)
    async with guarded_fetcher(dns, routes=routes) as fetcher:
        with pytest.raises(DownloadFailed) as err:
            await fetcher.fetch(f"http://{PUBLIC_HOST}/no-location")
    assert err.value.message == "redirect 1: Location header missing"


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        ("file:///etc/passwd", InvalidUrl, "redirect 1: only http and https URLs are accepted"),
        ("gopher://cdn.test/x", InvalidUrl, "redirect 1: only http and https URLs are accepted"),
        ("http://u:p@cdn.test/x", InvalidUrl, "redirect 1: URLs with credentials are not accepted"),
        (
            "http://cdn.test:6379/x",
            InvalidUrl,
            "redirect 1: port 6379 is not allowed (allowed: 80, 443; see ALLOWED_PORTS)",
        ),
    ],
)
async def test_fetch_checks_redirect_target(hostile, target, error, message):
    dns, routes = public_dns(hostile)
    async with guarded_fetcher(dns, routes=routes) as fetcher:
        with pytest.raises(error) as err:
            await fetcher.fetch(f"http://{PUBLIC_HOST}/redirect?to={quote(target, safe='')}")
    assert err.value.message == message


# --- ALLOWED_IMAGE_HOSTS ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "patterns", "allowed"),
    [
        ("cdn.test", ("cdn.test",), True),
        ("CDN.test.", ("cdn.test",), True),
        ("img.cdn.test", ("*.cdn.test",), True),
        ("a.b.cdn.test", ("*.cdn.test",), True),
        ("cdn.test", ("*.cdn.test",), False),
        ("evilcdn.test", ("*.cdn.test",), False),
        ("cdn.test.evil.test", ("cdn.test",), False),
        ("img.cdn.test", ("cdn.test",), False),
        ("other.test", ("cdn.test", "*.img.test"), False),
    ],
)
def test_host_allowed_matches_exact_or_suffix(host, patterns, allowed):
    assert host_allowed(host, patterns) is allowed


async def test_fetch_allowed_hosts_accepts_listed_host(hostile):
    dns, routes = public_dns(hostile)
    async with guarded_fetcher(dns, routes=routes, allowed_hosts=("*.test",)) as fetcher:
        assert await fetcher.fetch(f"http://{PUBLIC_HOST}/img/photo.jpg") == PHOTO


@pytest.mark.parametrize("allow_private", [False, True], ids=["guarded", "private-allowed"])
async def test_fetch_allowed_hosts_refuses_other_host(hostile, allow_private):
    dns, routes = public_dns(hostile, {"other.test": [PUBLIC_V4]})
    async with guarded_fetcher(dns, routes=routes, allowed_hosts=(PUBLIC_HOST,), allow_private=allow_private) as f:
        with pytest.raises(UrlNotAllowed) as err:
            await f.fetch("http://other.test/img/photo.jpg")
    assert err.value.message == "host 'other.test' is not in ALLOWED_IMAGE_HOSTS"
    assert dns.lookups == []


async def test_fetch_allowed_hosts_refuses_redirect_to_other_host(hostile):
    dns, routes = public_dns(hostile, {"other.test": [PUBLIC_V4]})
    async with guarded_fetcher(dns, routes=routes, allowed_hosts=(PUBLIC_HOST,)) as fetcher:
        with pytest.raises(UrlNotAllowed) as err:
            await fetcher.fetch(f"http://{PUBLIC_HOST}/redirect?to=http%3A%2F%2Fother.test%2Fimg%2Fphoto.jpg")
    assert err.value.message == "redirect 1: host 'other.test' is not in ALLOWED_IMAGE_HOSTS"


# --- ALLOW_PRIVATE_URLS=1 lifts the address and port rules only ------------------------------


async def test_fetch_private_allowed_reaches_local_server_on_any_port(victim):
    dns = FakeDns({"victim.test": ["127.0.0.1"]})
    async with guarded_fetcher(dns, allow_private=True) as fetcher:
        assert await fetcher.fetch(victim_url(victim, "127.0.0.1")) == PHOTO
        assert await fetcher.fetch(victim_url(victim, "victim.test")) == PHOTO
    assert victim.connections >= 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "only http and https URLs are accepted"),
        ("http://u:p@127.0.0.1/x", "URLs with credentials are not accepted"),
        ("http://127.0.0.1/" + "a" * 2048, "URL is longer than 2048 characters"),
    ],
)
async def test_fetch_private_allowed_keeps_url_rules(url, message):
    async with guarded_fetcher(FakeDns(), allow_private=True) as fetcher:
        with pytest.raises(InvalidUrl) as err:
            await fetcher.fetch(url)
    assert err.value.message == message


async def test_fetch_private_allowed_keeps_size_rule(victim):
    victim.files["big.jpg"] = PHOTO * 4
    async with guarded_fetcher(FakeDns(), allow_private=True, max_bytes=len(PHOTO)) as fetcher:
        with pytest.raises(ImageTooLarge):
            await fetcher.fetch(f"{victim.base}/img/big.jpg")


# --- through the API: the JSON errors a caller sees ------------------------------------------


@pytest.fixture(scope="module")
def guarded_service() -> Iterator[RunningService]:
    dns = FakeDns({"metadata.test": ["169.254.169.254"], "intranet.test": ["10.1.2.3"]})
    with run_service(tiny_settings(allow_private_urls=False), lookup=dns) as running:
        yield running


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("http://127.0.0.1/img/photo.jpg", 422, "url_not_allowed"),
        ("http://169.254.169.254/latest/meta-data/", 422, "url_not_allowed"),
        ("http://[::ffff:127.0.0.1]/", 422, "url_not_allowed"),
        ("http://metadata.test/latest/meta-data/", 422, "url_not_allowed"),
        ("http://2130706433/", 422, "url_not_allowed"),
        ("file:///etc/passwd", 422, "invalid_url"),
        ("http://intranet.test:8080/", 422, "invalid_url"),
    ],
)
def test_api_image_refuses_unsafe_url(guarded_service, url, status, code):
    got_status, body, _ = call(guarded_service.base, "/v1/embed/image", {"image_url": url})
    assert (got_status, body["error"]["code"]) == (status, code)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}


def test_api_batch_reports_refusals_per_item(guarded_service):
    urls = ["http://intranet.test/a.jpg", "gopher://x/", "http://0177.0.0.1/"]
    status, body, _ = call(guarded_service.base, "/v1/embed/image-batch", {"image_urls": urls})
    assert status == 200
    assert [r["error"]["code"] for r in body["results"]] == ["url_not_allowed", "invalid_url", "url_not_allowed"]
    assert (body["succeeded"], body["failed"]) == (0, 3)
