"""A bounded soak: the real server at twice its measured capacity, with good, broken, slow and oversized URLs.

Everything runs on this machine (127.0.0.1): the server (`python -m app`, started here), an image host
(bench/soak_images.py) and the load. Phases:
  1. reference vectors: each good image and text embedded alone, one request at a time, idle server;
  2. capacity: closed loop of single good images for --calibrate-s seconds (items/s);
  3. soak: requests sent open-loop at --load x capacity (items/s) for --duration seconds, a mix of
     good, slow, broken and oversized single images, texts, and batches mixing all of these with
     unreachable and too-slow URLs; then every answer is awaited;
  4. report: answers by status and code, batch items by outcome, unexpected answers (any 5xx other
     than 503 overloaded among them), every 200 vector against its reference, server RSS at start
     and end (growth must stay under 10%), a few server metrics, and the exit code after SIGTERM.
Exit status 0 when every check passes.

Usage: python -m bench.soak [--duration 300] [--model ViT-B-32] [--device cpu] [--load 2] [--calibrate-s 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from clip_client.signing import batch_payload_id, image_payload_id, new_nonce, signed_headers, text_payload_id

from bench.soak_images import BROKEN_NAMES, OVERSIZED_NAMES, ImageHost, start_host
from scripts.procs import free_port, spawn, wait_healthy

TEXTS = [
    "a photo of a cat",
    "a red car on a street",
    "two people on a beach",
    "a bowl of fruit",
    "an astronaut in a white suit",
    "a cup of coffee on a desk",
    "a mountain lake at dawn",
    "a city at night",
]
MAX_IMAGE_BYTES = 2 * 1024 * 1024
DOWNLOAD_TIMEOUT_S = 3.0
# (kind, weight, images that reach the model): what the soak sends, and how often. The offered rate is
# set in images that reach the model, the work the capacity was measured in; texts are cheap extras.
MIX = [("good", 40, 1), ("slow", 10, 1), ("broken", 10, 0), ("oversized", 5, 0), ("text", 15, 0), ("batch", 20, 2)]
EXPECTED = {"good": {200}, "slow": {200}, "text": {200}, "batch": {200}, "broken": {422}, "oversized": {413}}
ITEM_EXPECTED = {
    "good": {"ok"},
    "broken": {"invalid_image"},
    "missing": {"download_failed"},
    "too_slow": {"download_timeout"},
    "oversized": {"image_too_large"},
}


@dataclass
class Report:
    statuses: Counter[str] = field(default_factory=Counter)
    items: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    checked: int = 0
    mismatches: int = 0
    max_diff: float = 0.0
    latencies: list[float] = field(default_factory=list)


class Soak:
    def __init__(self, base: str, secret: str, host: ImageHost, seed: int, atol: float) -> None:
        self.base, self.secret, self.host, self.atol = base, secret, host, atol
        self.rng = random.Random(seed)
        self.refs: dict[str, np.ndarray] = {}
        self.report = Report()

    async def post(self, session: aiohttp.ClientSession, path: str, body: dict, payload: str) -> tuple[int, dict]:
        headers = signed_headers(self.secret, "POST", path, payload, nonce=new_nonce())
        async with session.post(self.base + path, json=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    async def image(self, session: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
        return await self.post(session, "/v1/embed/image", {"image_url": url}, image_payload_id(url))

    async def text(self, session: aiohttp.ClientSession, text: str) -> tuple[int, dict]:
        return await self.post(session, "/v1/embed/text", {"text": text}, text_payload_id(text))

    async def references(self, session: aiohttp.ClientSession) -> None:
        for name in self.host.good:
            status, body = await self.image(session, self.host.url("img", name))
            assert status == 200, (name, status, body)
            self.refs[name] = np.asarray(body["embedding"], dtype=np.float32)
        for text in TEXTS:
            status, body = await self.text(session, text)
            assert status == 200, (text, status, body)
            self.refs["text:" + text] = np.asarray(body["embedding"], dtype=np.float32)

    async def capacity(self, session: aiohttp.ClientSession, seconds: float, clients: int = 8) -> float:
        done = 0
        end = time.monotonic() + seconds

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < end:
                status, _ = await self.image(session, self.host.url("img", self.host.random_good(self.rng)))
                done += status == 200

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(clients)))
        return done / (time.monotonic() - started)

    def check(self, key: str, embedding: list[float]) -> None:
        diff = float(np.max(np.abs(np.asarray(embedding, dtype=np.float32) - self.refs[key])))
        self.report.checked += 1
        self.report.max_diff = max(self.report.max_diff, diff)
        self.report.mismatches += diff > self.atol

    def batch_items(self) -> list[tuple[str, str]]:
        """Return (item kind, URL) pairs for one batch request: good ones plus one of each failure."""
        h, rng = self.host, self.rng
        items = [("good", h.url("img", h.random_good(rng))) for _ in range(2)]
        items += [
            ("broken", h.url("img", rng.choice(BROKEN_NAMES))),
            ("missing", h.url("status", "404")),
            ("too_slow", h.url("slow", h.random_good(rng), DOWNLOAD_TIMEOUT_S + 1)),
            ("oversized", h.url("img", rng.choice(OVERSIZED_NAMES))),
        ]
        rng.shuffle(items)
        return items

    async def one(self, session: aiohttp.ClientSession, kind: str) -> None:
        h, rng, r = self.host, self.rng, self.report
        name = h.random_good(rng)
        started = time.monotonic()
        try:
            if kind == "text":
                text = rng.choice(TEXTS)
                status, body = await self.text(session, text)
                name = "text:" + text
            elif kind == "batch":
                items = self.batch_items()
                urls = [u for _, u in items]
                status, body = await self.post(
                    session, "/v1/embed/image-batch", {"image_urls": urls}, batch_payload_id(urls)
                )
            else:
                route, target, delay = {
                    "good": ("img", name, None),
                    "slow": ("slow", name, rng.uniform(0.3, 1.5)),
                    "broken": ("img", rng.choice(BROKEN_NAMES), None),
                    "oversized": ("img", rng.choice(OVERSIZED_NAMES), None),
                }[kind]
                status, body = await self.image(session, h.url(route, target, delay))
        except (aiohttp.ClientError, TimeoutError) as exc:
            r.statuses[f"client {type(exc).__name__}"] += 1
            r.unexpected.append(f"{kind}: client {type(exc).__name__}")
            return
        code = body.get("error", {}).get("code") if status != 200 else None
        r.statuses[f"{status} {code or ''}".strip()] += 1
        if status == 503 and code == "overloaded":
            return
        if status not in EXPECTED[kind]:
            r.unexpected.append(f"{kind}: {status} {code}")
            return
        r.latencies.append(time.monotonic() - started)
        if kind == "batch":
            for (item_kind, url), result in zip(items, body["results"], strict=True):
                outcome = result["error"]["code"] if result["error"] else "ok"
                r.items[f"{item_kind}: {outcome}"] += 1
                if outcome not in ITEM_EXPECTED[item_kind] | {"overloaded"}:
                    r.unexpected.append(f"batch item {item_kind}: {outcome}")
                elif outcome == "ok":
                    self.check(url.rsplit("/", 1)[1].split("?")[0], result["embedding"])
        elif status == 200:
            self.check(name, body["embedding"])

    async def soak(self, session: aiohttp.ClientSession, images_per_s: float, seconds: float) -> int:
        kinds = [k for k, _, _ in MIX]
        weights = [w for _, w, _ in MIX]
        interval = sum(w * n for _, w, n in MIX) / sum(weights) / images_per_s
        tasks: set[asyncio.Task[None]] = set()
        sent, start = 0, time.monotonic()
        while (now := time.monotonic()) < start + seconds:
            await asyncio.sleep(max(0.0, start + sent * interval - now))
            task = asyncio.create_task(self.one(session, self.rng.choices(kinds, weights)[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if tasks:
            await asyncio.wait(tasks, timeout=180)
        return sent


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


async def _metrics(session: aiohttp.ClientSession, base: str) -> list[str]:
    async with session.get(base + "/metrics") as resp:
        text = await resp.text()
    keep = (
        "clip_dropped_items_total",
        "clip_oom_events_total",
        "clip_errors_total",
        "clip_batch_size_sum",
        "clip_batch_size_count",
        "clip_embeddings_total",
    )
    return [line for line in text.splitlines() if line.startswith(keep)]


async def main_async(args: argparse.Namespace) -> int:
    secret = secrets.token_hex(16)
    host = ImageHost(max_image_bytes=MAX_IMAGE_BYTES)
    host.build(args.images, seed=args.seed)
    runner = await start_host(host)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "EMBEDDING_HMAC_SECRET": secret,
        "CLIP_MODEL": args.model,
        "CLIP_PRETRAINED": args.pretrained,
        "DEVICE": args.device,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ALLOW_PRIVATE_URLS": "1",
        "ALLOWED_PORTS": host.base.rsplit(":", 1)[1],
        "CACHE_MAX_ENTRIES": "0" if not args.cache else "10000",
        "MAX_IMAGE_SIZE_BYTES": str(MAX_IMAGE_BYTES),
        "IMAGE_DOWNLOAD_TIMEOUT_S": str(DOWNLOAD_TIMEOUT_S),
        "DOWNLOAD_CONCURRENCY": "64",
        "LOG_LEVEL": "warning",
        "MAX_QUEUED_ITEMS": str(args.max_queued),
    }
    # Named in the report; kept after the run.
    fd, log_name = tempfile.mkstemp(prefix="soak-server-", suffix=".log")
    os.close(fd)
    # Started once, before the load: blocking the loop here costs nothing.
    server = spawn(["-m", "app"], env, log=Path(log_name))
    soak = Soak(base, secret, host, args.seed, args.atol)
    timeout = aiohttp.ClientTimeout(total=180)
    try:
        await asyncio.to_thread(wait_healthy, base, time.monotonic() + 300, server, Path(log_name))
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=1024)) as session:
            await soak.references(session)
            capacity = await soak.capacity(session, args.calibrate_s)
            rss_idle = rss_mib(server.pid)
            print(
                f"capacity: {capacity:.1f} images/s (closed loop, 8 clients, {args.calibrate_s:g} s); "
                f"soak at {args.load:g}x = {capacity * args.load:.1f} model images/s (plus failing URLs and texts) "
                f"for {args.duration:g} s",
                flush=True,
            )
            samples: list[tuple[float, float]] = []
            sampler = asyncio.create_task(sample_rss(server.pid, samples))
            started = time.monotonic()
            sent = await soak.soak(session, capacity * args.load, args.duration)
            elapsed = time.monotonic() - started
            sampler.cancel()
            await asyncio.sleep(2)
            # Steady state: once the backlog has had time to fill the admission bound.
            fill_s = args.max_queued / max(capacity * (args.load - 1), 1e-9)
            rss = RssFigures(
                rss_idle, samples, rss_mib(server.pid), warm_up_s=min(args.duration / 2, max(30.0, 1.5 * fill_s))
            )
            metrics = await _metrics(session, base)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        exit_code = server.wait(60)
        await runner.cleanup()
    return print_report(args, soak.report, sent, elapsed, rss, metrics, exit_code, log_name)


async def sample_rss(pid: int, samples: list[tuple[float, float]], every_s: float = 2.0) -> None:
    """Append (seconds since start, RSS MiB) every `every_s` until cancelled."""
    start = time.monotonic()
    while True:
        samples.append((time.monotonic() - start, rss_mib(pid)))
        await asyncio.sleep(every_s)


@dataclass
class RssFigures:
    """Server RSS: idle before the soak, sampled during it, and after the answers were awaited.

    Growth compares the end of the soak with the end of its warm-up (both under the same load, queue
    full), so that the memory of a full admission queue is not mistaken for a leak.
    """

    idle: float
    samples: list[tuple[float, float]]
    drained: float
    warm_up_s: float

    @property
    def start(self) -> float:
        return next((mib for t, mib in self.samples if t >= self.warm_up_s), self.samples[-1][1])

    @property
    def end(self) -> float:
        return self.samples[-1][1]


def print_report(args, r: Report, sent, elapsed, rss: RssFigures, metrics, exit_code, log_name) -> int:
    print(
        f"model {args.model} ({args.pretrained}) on {args.device}, MAX_QUEUED_ITEMS={args.max_queued}, cache "
        f"{'on' if args.cache else 'off'}; {sent} requests in {elapsed:.0f} s (answers awaited); server log: {log_name}"
    )
    print("answers by status:")
    for key, n in sorted(r.statuses.items()):
        print(f"  {key:28s} {n}")
    print("batch items by kind and outcome:")
    for key, n in sorted(r.items.items()):
        print(f"  {key:28s} {n}")
    five_xx = sum(n for k, n in r.statuses.items() if k.startswith("5") and k != "503 overloaded")
    lat = sorted(r.latencies)
    if lat:
        print(
            f"latency of answered requests: p50 {lat[len(lat) // 2] * 1000:.0f} ms, "
            f"p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000:.0f} ms"
        )
    growth = (rss.end - rss.start) / rss.start * 100
    print(
        f"server RSS: idle {rss.idle:.0f} MiB before the soak, peak {max(m for _, m in rss.samples):.0f} MiB, "
        f"{rss.drained:.0f} MiB after the answers were awaited; during the soak (s: MiB):"
    )
    step = max(1, len(rss.samples) // 12)
    print("  " + ", ".join(f"{t:.0f}: {m:.0f}" for t, m in rss.samples[::step]))
    checks = {
        f"5xx other than 503 overloaded: {five_xx}": five_xx == 0,
        f"unexpected answers: {len(r.unexpected)} {Counter(r.unexpected).most_common(5)}": not r.unexpected,
        f"200 vectors vs reference computed alone: {r.checked} checked, {r.mismatches} over {args.atol:g} "
        f"(max |diff| {r.max_diff:.2e})": r.mismatches == 0 and r.checked > 0,
        f"server RSS under load: start {rss.start:.0f} MiB (after {rss.warm_up_s:.0f} s warm-up), end {rss.end:.0f} MiB, "
        f"growth {growth:+.1f}% (< 10%)": growth < 10,
        f"exit code after SIGTERM: {exit_code}": exit_code == 0,
    }
    for line, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {line}")
    print("server metrics at the end:")
    for line in metrics:
        print(f"  {line}")
    return 0 if all(checks.values()) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of soak (default 5 minutes)")
    parser.add_argument("--calibrate-s", type=float, default=20.0)
    parser.add_argument("--load", type=float, default=2.0, help="offered load as a multiple of capacity")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-queued", type=int, default=256, help="the server's MAX_QUEUED_ITEMS for the soak")
    parser.add_argument("--images", type=int, default=16, help="distinct good images")
    parser.add_argument("--cache", action="store_true", help="keep the embedding cache on (off by default)")
    parser.add_argument("--atol", type=float, default=1e-4, help="max |diff| of a vector against its reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.duration <= 3600 or not 1 <= args.calibrate_s <= 300 or not 0.1 <= args.load <= 10:
        raise SystemExit("duration must be 1..3600 s, calibrate-s 1..300 s, load 0.1..10")
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
