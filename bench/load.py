"""A bounded load generator: C concurrent clients sending signed requests for a fixed time.

Each client loops: one request of B image URLs (from a local static server over a photo folder) or
B texts, waits for the answer, repeats until the duration is over. 127.0.0.1 only.
Prints items/s, p50/p99 request latency and errors; --json prints one JSON object. `--server` takes a
comma-separated list: client i sends to server i mod n (servers behind no balancer, split evenly).

Usage: EMBEDDING_HMAC_SECRET=... python -m bench.load --server http://127.0.0.1:8000 \
           --kind image -c 16 -b 1 --duration 30 [--photos ../shared/photos --glob '*-1mp.jpg']
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import statistics
import subprocess
import time
from urllib.parse import urlsplit

import aiohttp
import orjson
import uvloop
from clip_client.signing import batch_payload_id, image_payload_id, new_nonce, signed_headers, text_payload_id

from bench import static
from scripts.procs import free_port, stop

CAPTIONS = [
    "a photo of a cat on a sofa",
    "a red car parked on the street",
    "two people walking on a beach",
    "a bowl of fruit on a table",
    "an astronaut in a white suit",
    "a cup of coffee on a desk",
]


def _request(kind: str, batch: int, urls: list[str], n: int) -> tuple[str, dict, str]:
    if kind == "text":
        text = f"{CAPTIONS[n % len(CAPTIONS)]} {n}"
        return "/v1/embed/text", {"text": text}, text_payload_id(text)
    if batch == 1:
        url = urls[n % len(urls)]
        return "/v1/embed/image", {"image_url": url}, image_payload_id(url)
    chunk = [urls[(n * batch + i) % len(urls)] for i in range(batch)]
    return "/v1/embed/image-batch", {"image_urls": chunk}, batch_payload_id(chunk)


async def run_load(
    server: str, kind: str, clients: int, batch: int, duration: float, urls: list[str], secret: str
) -> dict:
    servers = server.split(",")
    if any(urlsplit(s).hostname not in ("127.0.0.1", "localhost", "::1") for s in servers):
        raise SystemExit("bench.load only targets servers on this machine (127.0.0.1)")
    latencies: list[float] = []
    errors: dict[str, int] = {}
    items = 0
    counter = 0
    deadline = time.perf_counter() + duration

    async def client(session: aiohttp.ClientSession, server: str) -> None:
        nonlocal items, counter
        while time.perf_counter() < deadline:
            counter += 1
            path, body, payload = _request(kind, batch, urls, counter)
            headers = signed_headers(secret, "POST", path, payload, nonce=new_nonce())
            started = time.perf_counter()
            try:
                # orjson: the load generator shares the cores with the server, so it should cost little.
                headers["Content-Type"] = "application/json"
                async with session.post(server + path, data=orjson.dumps(body), headers=headers) as resp:
                    answer = orjson.loads(await resp.read())
                    if resp.status != 200:
                        code = f"{resp.status} {answer.get('error', {}).get('code')}"
                        errors[code] = errors.get(code, 0) + 1
                        continue
                    if "results" in answer:
                        items += answer["succeeded"]
                        for r in answer["results"]:
                            if r["error"]:
                                errors[r["error"]["code"]] = errors.get(r["error"]["code"], 0) + 1
                    else:
                        items += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - started)

    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session, servers[i % len(servers)]) for i in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")
    return {
        "kind": kind,
        "clients": clients,
        "batch": batch,
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "items_per_s": items / elapsed,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--kind", choices=["image", "text"], default="image")
    parser.add_argument("-c", "--clients", type=int, default=16)
    parser.add_argument("-b", "--batch", type=int, default=1)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--photos", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "photos"))
    parser.add_argument("--glob", default="*-1mp.jpg")
    parser.add_argument(
        "--static-servers", type=int, default=1, help="static server processes (bench.static) to spread URLs over"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    secret = os.environ.get("EMBEDDING_HMAC_SECRET", "").split(",")[0]
    if not secret:
        raise SystemExit("set EMBEDDING_HMAC_SECRET to the server's secret")
    if not 1 <= args.clients <= 256 or not 1 <= args.duration <= 3600:
        raise SystemExit("clients must be 1..256 and duration 1..3600 s")

    urls: list[str] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if args.kind == "image":
            files = sorted(glob.glob(os.path.join(args.photos, args.glob)))
            if not files:
                raise SystemExit(f"no photos match {args.glob} in {args.photos}")
            ports = [free_port() for _ in range(max(1, args.static_servers))]
            for port in ports:
                procs.append(static.start(args.photos, args.glob, port))
            urls = [f"http://127.0.0.1:{port}/{os.path.basename(f)}" for f in files for port in ports]
        # uvloop, as the server runs on: the generator shares the cores with the server, so it should cost little.
        result = uvloop.run(run_load(args.server, args.kind, args.clients, args.batch, args.duration, urls, secret))
    finally:
        stop(*procs)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:12s} {value}")


if __name__ == "__main__":
    main()
