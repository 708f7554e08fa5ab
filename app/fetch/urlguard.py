"""Decide which URLs and addresses the service may fetch from (the SSRF guard).

Two halves that share one policy: `UrlGuard.check_url` looks at a URL before any connection (port,
host allowlist, IPv4 spellings, IP literals), and `GuardedResolver` is the aiohttp connector's only
resolver, so a connection goes to an address that was checked, with no second lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from app.errors import InvalidUrl, UrlNotAllowed
from app.settings import Settings

log = logging.getLogger("app.fetch.urlguard")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses it resolves to (tests inject their own)
Lookup = Callable[[str, int], Awaitable[list[str]]]

DEFAULT_PORTS = frozenset({80, 443})
_HOSTNAME_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?$")
# A last label that a URL parser or inet_aton would read as a number (WHATWG "ends in a number").
_NUMERIC_LABEL_RE = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")

# Refused whatever `is_global` says (its answer differs between Python versions).
_REFUSED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unspecified", ("0.0.0.0/8", "::/128")),
    ("loopback", ("127.0.0.0/8", "::1/128")),
    ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
    ("shared (CGNAT)", ("100.64.0.0/10",)),
    ("link-local", ("169.254.0.0/16", "fe80::/10")),
    ("site-local", ("fec0::/10",)),
    ("multicast", ("224.0.0.0/4", "ff00::/8")),
    (
        "reserved",
        (
            "240.0.0.0/4",
            "192.0.0.0/24",
            "192.88.99.0/24",
            "198.18.0.0/15",
            "100::/64",
            "2001::/23",
            "64:ff9b:1::/48",
            "5f00::/16",
        ),
    ),
    ("documentation", ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20")),
)
_REFUSED_NETS = tuple((label, ipaddress.ip_network(net)) for label, nets in _REFUSED for net in nets)


def address_class(ip: IPAddress) -> str | None:
    """Name the class of a non-public address; None when `ip` is globally routable."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner = address_class(embedded)
            return f"{inner} inside IPv6" if inner else None
    for label, net in _REFUSED_NETS:
        if ip.version == net.version and ip in net:
            return label
    if ip.version == 6 and ip in _IPV4_COMPATIBLE:
        return "IPv4-compatible IPv6 (deprecated)"
    if ip.is_multicast:
        return "multicast"
    if not ip.is_global:
        return "reserved"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address that mapped, 6to4 and NAT64 (64:ff9b::/96) addresses carry."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """Match a host against `ALLOWED_IMAGE_HOSTS` entries: exact names, or `*.suffix` for subdomains."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """What may be fetched; `allow_private` lifts the address and port rules only."""

    allow_private: bool = False
    allowed_ports: frozenset[int] = DEFAULT_PORTS
    allowed_hosts: tuple[str, ...] = field(default=())


def make_guard(settings: Settings, lookup: Lookup | None = None) -> UrlGuard:
    """Build the guard that ALLOW_PRIVATE_URLS, ALLOWED_PORTS and ALLOWED_IMAGE_HOSTS describe."""
    if settings.allow_private_urls:
        log.warning("ALLOW_PRIVATE_URLS=1: private addresses and any port may be fetched (development only)")
    policy = UrlPolicy(
        allow_private=settings.allow_private_urls,
        allowed_ports=settings.allowed_ports,
        allowed_hosts=settings.allowed_image_hosts,
    )
    return UrlGuard(policy, lookup or system_lookup)


async def system_lookup(host: str, port: int) -> list[str]:
    """Resolve `host` with the system resolver (getaddrinfo), returning unique addresses."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class UrlGuard:
    """Apply a `UrlPolicy` to URLs (before connecting) and to resolved addresses."""

    def __init__(self, policy: UrlPolicy, lookup: Lookup = system_lookup) -> None:
        self.policy = policy
        self._lookup = lookup

    def check_url(self, url: URL) -> None:
        """Refuse a URL on its port, host name or literal address, without any network access."""
        host = (url.host or "").lower()
        literal = _ip_literal(host)
        if literal is None:
            if not _HOSTNAME_RE.match(host):
                raise InvalidUrl("URL host is not a valid host name")
            if _NUMERIC_LABEL_RE.match(host.rstrip(".").rsplit(".", 1)[-1]):
                raise UrlNotAllowed(f"host {host!r} is not a canonical IPv4 address; write it as a.b.c.d")
        if self.policy.allowed_hosts and not host_allowed(host, self.policy.allowed_hosts):
            raise UrlNotAllowed(f"host {host!r} is not in ALLOWED_IMAGE_HOSTS")
        if self.policy.allow_private:
            return
        if url.port not in self.policy.allowed_ports:
            ports = ", ".join(map(str, sorted(self.policy.allowed_ports)))
            raise InvalidUrl(f"port {url.port} is not allowed (allowed: {ports}; see ALLOWED_PORTS)")
        if literal is not None:
            kind = address_class(literal)
            if kind is not None:
                log.warning("refused URL to %s address %s", kind, literal)
                raise UrlNotAllowed(f"address {host} is not public ({kind})")

    async def resolve(self, host: str, port: int) -> list[str]:
        """Resolve `host`; refuse if ANY of its addresses is not public (unless private is allowed)."""
        try:
            addresses = [ipaddress.ip_address(a) for a in await self._lookup(host, port)]
        except ValueError:
            raise OSError(f"resolver returned a non-address for {host}") from None
        if not addresses:
            raise OSError(f"{host} has no addresses")
        if not self.policy.allow_private:
            for ip in addresses:
                kind = address_class(ip)
                if kind is not None:
                    log.warning("refused host %s: it resolves to %s address %s", host, kind, ip)
                    raise UrlNotAllowed(f"host {host!r} resolves to a non-public address")
        return [str(ip) for ip in addresses]


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class GuardedResolver(AbstractResolver):
    """The connector's resolver: returns only addresses the guard has checked."""

    def __init__(self, guard: UrlGuard) -> None:
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await self._guard.resolve(host, port)
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for a in addresses
        ]

    async def close(self) -> None:
        return None
