"""DNS and routing seams for tests of the URL guard, which always run with the guard ON.

`FakeDns` is the lookup the guard consults (host name -> the addresses under test).
`RoutedResolver` wraps the real `GuardedResolver`: after the guard has checked and accepted an
address, it sends the connection to a local server instead (public addresses cannot be reached from
the test machine). A refused address never reaches the routing step.
"""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver, ResolveResult

from app.fetch.urlguard import GuardedResolver

# Globally routable addresses that stand in for "a public web server" in tests.
PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


class FakeDns:
    """A lookup: names map to address lists; unknown names fail like NXDOMAIN. Counts lookups."""

    def __init__(self, records: dict[str, list[str]] | None = None) -> None:
        self.records: dict[str, list[str]] = dict(records or {})
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        answer = self.records.get(host.rstrip(".").lower())
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(answer)


class RebindingDns(FakeDns):
    """Answers each name from a script: the first lookup gets the first list, and so on."""

    def __init__(self, script: dict[str, list[list[str]]]) -> None:
        super().__init__()
        self._script = {host: list(answers) for host, answers in script.items()}

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        answers = self._script[host]
        return answers.pop(0) if len(answers) > 1 else answers[0]


class RoutedResolver(AbstractResolver):
    """Resolve through the guard, then route accepted addresses to local ports: {address: port}."""

    def __init__(self, guarded: GuardedResolver, routes: dict[str, int]) -> None:
        self._guarded = guarded
        self.routes = routes

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._guarded.resolve(host, port, family)
        routed = []
        for r in results:
            if r["host"] in self.routes:
                r = ResolveResult(
                    hostname=r["hostname"],
                    host="127.0.0.1",
                    port=self.routes[r["host"]],
                    family=socket.AF_INET,
                    proto=0,
                    flags=0,
                )
            routed.append(r)
        return routed

    async def close(self) -> None:
        await self._guarded.close()
