"""A bounded load generator: C concurrent clients sending signed requests for a fixed time.

Each client loops: one request of B image URLs (from a local static server over a photo folder), B
uploaded photos (`--upload`: multipart, no download in the way) or B texts, waits for the answer,
repeats until the duration is over. 127.0.0.1 only.
Prints items/s, p50/p99 request latency and errors; --json prints one JSON object. `--server` takes a
comma-separated list: client i sends to server i mod n (servers behind no balancer, split evenly).

A sweep: `-c` and `-b` take comma-separated values (`-c 1,4,16 -b 1,16`): one load per pair, one after
the other, a table row each (--json: a list); `--plot PATH` draws items/s and p50 against the clients
(one line per batch size), or against the batch size when the clients are one value.

Usage: EMBEDDING_HMAC_SECRET=... python -m bench.load --server http://127.0.0.1:8000 \
           --kind image -c 16 -b 1 --duration 30 [--photos ../shared/photos --glob '*-1mp.jpg']
       python -m bench.load --kind text -c 1,4,16,64 --duration 10 --plot captions.png
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import pathlib
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson
import uvloop
from clip_client.signing import (
    UPLOAD_PATH,
    batch_payload_id,
    image_payload_id,
    new_nonce,
    signed_headers,
    text_payload_id,
    upload_payload_id,
)

from bench import static
from bench.plot import Panel, machine_note, sweep_figure
from scripts.procs import free_port, stop

CAPTIONS = [
    "a photo of a cat on a sofa",
    "a red car parked on the street",
    "two people walking on a beach",
    "a bowl of fruit on a table",
    "an astronaut in a white suit",
    "a cup of coffee on a desk",
]


BOUNDARY = "bench-load-boundary-7e1f"


class Uploads:
    """Multipart bodies of B photos each, built once: sending them costs the load generator little."""

    def __init__(self, photos: list[bytes], batch: int) -> None:
        self._bodies = []
        for n in range(len(photos)):
            parts = [photos[(n * batch + i) % len(photos)] for i in range(batch)]
            body = b"".join(
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="p{i}.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n".encode()
                + part
                + b"\r\n"
                for i, part in enumerate(parts)
            )
            self._bodies.append((body + f"--{BOUNDARY}--\r\n".encode(), upload_payload_id(parts)))

    def request(self, n: int) -> tuple[bytes, str]:
        """Return the n-th request's body and payload id."""
        return self._bodies[n % len(self._bodies)]


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
    server: str,
    kind: str,
    clients: int,
    batch: int,
    duration: float,
    urls: list[str],
    secret: str,
    uploads: Uploads | None = None,
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
            if uploads is not None:
                path, (data, payload) = UPLOAD_PATH, uploads.request(counter)
                content_type = f"multipart/form-data; boundary={BOUNDARY}"
            else:
                path, body, payload = _request(kind, batch, urls, counter)
                # orjson: the load generator shares the cores with the server, so it should cost little.
                data, content_type = orjson.dumps(body), "application/json"
            headers = signed_headers(secret, "POST", path, payload, nonce=new_nonce())
            headers["Content-Type"] = content_type
            started = time.perf_counter()
            try:
                async with session.post(server + path, data=data, headers=headers) as resp:
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


def sweep_panels(results: list[dict]) -> tuple[str, tuple[Panel, Panel]]:
    """Return the x axis (clients, or the batch size when the clients are one value) and the plot's panels:
    items/s and p50 against it, one line per value of the other."""
    by_clients = len({r["clients"] for r in results}) > 1
    x_key, line_key, line_label = ("clients", "batch", "B") if by_clients else ("batch", "clients", "C")
    unit = "images" if results[0]["kind"] == "image" else "texts"
    rate, p50 = Panel(f"{unit}/s"), Panel("p50 ms")
    for r in results:
        name = f"{line_label}={r[line_key]}" if unit == "images" else "one text per request"
        rate.add(name, r[x_key], r["items_per_s"])
        p50.add(name, r[x_key], r["p50_ms"])
    return ("clients" if by_clients else f"{unit} per request"), (rate, p50)


def describe_server(server: str) -> str:
    """Name the model and device a server reports on /health, for a plot's title (the URL if it says none)."""
    try:
        with urllib.request.urlopen(f"{server}/health", timeout=10) as resp:
            health = json.loads(resp.read())
    except (OSError, ValueError):
        return server
    weights = " (random weights)" if health.get("random_weights") else ""
    return f"{health.get('model', '?')}{weights} on {health.get('device', '?')}"


def _counts(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, not {text!r}") from None
    if not values or not all(1 <= v <= 256 for v in values):
        raise argparse.ArgumentTypeError(f"each value must be 1..256, not {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--kind", choices=["image", "text"], default="image")
    parser.add_argument("-c", "--clients", type=_counts, default=[16], help="clients, or a sweep: 1,4,16")
    parser.add_argument(
        "-b", "--batch", type=_counts, default=[1], help="images per request (texts: always 1), or a sweep: 1,16"
    )
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--photos", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "photos"))
    parser.add_argument("--glob", default="*-1mp.jpg")
    parser.add_argument(
        "--static-servers", type=int, default=1, help="static server processes (bench.static) to spread URLs over"
    )
    parser.add_argument("--upload", action="store_true", help="send the photos as multipart uploads, not URLs")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="with a sweep: also draw items/s and p50 into this PNG")
    args = parser.parse_args()
    secret = os.environ.get("EMBEDDING_HMAC_SECRET", "").split(",")[0]
    if not secret:
        raise SystemExit("set EMBEDDING_HMAC_SECRET to the server's secret")
    if not 1 <= args.duration <= 3600:
        raise SystemExit("duration must be 1..3600 s")
    points = [(c, b) for c in args.clients for b in args.batch]
    if args.plot and len(points) < 2:
        raise SystemExit("--plot draws a sweep: give -c or -b several values")

    urls: list[str] = []
    photos: list[bytes] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if args.kind == "image" and args.upload:
            files = sorted(glob.glob(os.path.join(args.photos, args.glob)))
            if not files:
                raise SystemExit(f"no photos match {args.glob} in {args.photos}")
            photos = [pathlib.Path(f).read_bytes() for f in files]
        elif args.kind == "image":
            files = sorted(glob.glob(os.path.join(args.photos, args.glob)))
            if not files:
                raise SystemExit(f"no photos match {args.glob} in {args.photos}")
            ports = [free_port() for _ in range(max(1, args.static_servers))]
            for port in ports:
                procs.append(static.start(args.photos, args.glob, port))
            urls = [f"http://127.0.0.1:{port}/{os.path.basename(f)}" for f in files for port in ports]
        # uvloop, as the server runs on: the generator shares the cores with the server, so it should cost little.
        results = [
            uvloop.run(
                run_load(
                    args.server, args.kind, c, b, args.duration, urls, secret, Uploads(photos, b) if photos else None
                )
            )
            for c, b in points
        ]
    finally:
        stop(*procs)
    if len(results) == 1:
        print(json.dumps(results[0]) if args.json else "\n".join(f"{k:12s} {v}" for k, v in results[0].items()))
        return
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{'clients':>7s} {'batch':>5s} {'items/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} errors")
        for r in results:
            print(
                f"{r['clients']:7d} {r['batch']:5d} {r['items_per_s']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f}"
                f" {sum(r['errors'].values())}"
            )
    if args.plot:
        xlabel, panels = sweep_panels(results)
        described = describe_server(args.server.split(",")[0])
        title = f"bench.load: {'images' if args.kind == 'image' else 'captions'}, {described}"
        note = f"{args.duration:g} s per point, one after the other; {machine_note()}"
        print(f"plot: {sweep_figure(args.plot, title, xlabel, panels, note, log_x=True)}")


if __name__ == "__main__":
    main()
