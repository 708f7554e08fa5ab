"""The HTTP layer's cost per item: the real app in front of a stand-in model that costs nothing.

The stand-in keeps open_clip's real tokenizer and returns a fixed vector at once, so what is measured
is what every item pays besides the forward pass: HTTP, validation, signature, tokenising or
downloading, queueing, the answer. On a GPU that cost, not the model, bounds throughput. Prints
items/s at saturation, the server's CPU per item and its event-loop thread's CPU per item: the loop
is one thread, so 1 / (loop CPU per item) bounds the items/s of one server process whatever the
model and the decode pool do. `--kind image` downloads tiny generated JPEGs (64x48) from a local
static server, so decoding costs little and the download, queueing and answer path shows.
`--compare-settle` runs it with and without `app.ops.heap.settle_heap` (what `python -m app` applies once
the model is ready) and prints the ratio. Compare code changes by running it in each checkout.
127.0.0.1 only; Linux (/proc) for CPU times.

Usage: python -m bench.overhead [--kind text|image] [--clients 32] [--batch 1] [--duration 10] [--compare-settle]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import open_clip
import torch
from PIL import Image

from bench.procs import cpu_seconds
from scripts.procs import free_port, spawn, stop, wait_healthy

SECRET = "bench-overhead-secret"
# The stand-in server's settings: signed, no cache (every item takes the whole path), quiet.
SERVER_ENV = {
    "EMBEDDING_HMAC_SECRET": SECRET,
    "CLIP_MODEL": "ViT-B-32",
    "CLIP_PRETRAINED": "none",
    "DEVICE": "cpu",
    "LOG_LEVEL": "warning",
    "CACHE_MAX_ENTRIES": "0",
    "ALLOW_PRIVATE_URLS": "1",
}


class StandIn:
    """A model of no cost: open_clip's tokenizer, a fixed 512-d vector for every input."""

    def __init__(self) -> None:
        from app.inference.model import ModelInfo

        # Every stand-in gives the same vectors, so processes may share them in Redis (bench.workers).
        self.info = ModelInfo(
            "stand-in", "none", "cpu", "float32", 512, image_size=224, context_length=77, fingerprint="bench-stand-in"
        )
        self._tokenizer = open_clip.get_tokenizer("ViT-B-32")
        self._vector = np.full(512, 512**-0.5, dtype=np.float32)

    def tokenize(self, text: str) -> torch.Tensor:
        return self._tokenizer([text])[0]

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.zeros(3, 224, 224)

    def encode_images(self, pixels: list[torch.Tensor]) -> np.ndarray:
        return np.stack([self._vector] * len(pixels))

    def encode_texts(self, tokens: list[torch.Tensor]) -> np.ndarray:
        return np.stack([self._vector] * len(tokens))

    def warm_up(self) -> None:
        pass


def serve(port: int, settle: bool) -> None:
    """Run the real app with the stand-in model (the child process)."""
    import uvicorn

    from app.main import create_app
    from app.ops.heap import settle_heap
    from app.ops.logs import configure_logging
    from app.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, embedder_factory=lambda _: StandIn(), on_ready=settle_heap if settle else None)
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


def tiny_photos(folder: str, count: int = 8) -> None:
    """Write `count` small noisy JPEGs (64x48) to `folder`: cheap to decode, real to download."""
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"tiny-{i}.jpg"), quality=85)


def measure(kind: str, clients: int, batch: int, duration: float, settle: bool) -> dict[str, float]:
    """Start a server, load it with captions or tiny images for `duration` s, return its figures.

    The server's other settings (CPU_WORKERS, DOWNLOAD_CONCURRENCY...) come from the environment.
    """
    port = free_port()
    # The default MAX_BATCH_SIZE (16) would refuse larger image batches.
    env = os.environ | SERVER_ENV | {"MAX_BATCH_SIZE": str(max(16, batch))}
    server = spawn(["-m", "bench.overhead", "--serve", str(port)] + ([] if settle else ["--no-settle"]), env)
    try:
        with tempfile.TemporaryDirectory() as photos:
            tiny_photos(photos)
            wait_healthy(f"http://127.0.0.1:{port}", time.monotonic() + 60, server)
            before, loop_before = cpu_seconds(server.pid), cpu_seconds(server.pid, server.pid)
            command = [sys.executable, "-m", "bench.load", "--json", "--server", f"http://127.0.0.1:{port}"]
            command += ["--kind", kind, "-c", str(clients), "-b", str(batch), "--duration", str(duration)]
            command += ["--photos", photos, "--glob", "*.jpg"]
            load = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            cpu, loop_cpu = cpu_seconds(server.pid) - before, cpu_seconds(server.pid, server.pid) - loop_before
    finally:
        stop(server)
    result = json.loads(load.stdout)
    items = max(1.0, result["items_per_s"] * result["seconds"])
    return {
        "items_per_s": result["items_per_s"],
        "server_cpu_us_per_item": cpu / items * 1e6,
        "loop_cpu_us_per_item": loop_cpu / items * 1e6,
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "errors": sum(result["errors"].values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["text", "image"], default="text")
    parser.add_argument("-c", "--clients", type=int, default=32)
    parser.add_argument("-b", "--batch", type=int, default=1, help="items per request (images: 1 uses /v1/embed/image)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--compare-settle", action="store_true", help="also run without settle_heap; print the ratio")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-settle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, settle=not args.no_settle)
        return
    if not 1 <= args.clients <= 256 or not 1 <= args.duration <= 600:
        raise SystemExit("clients must be 1..256 and duration 1..600 s")
    if args.kind == "text" and args.batch != 1:
        raise SystemExit("text requests hold one text: --batch applies to images")
    runs = {"settled": measure(args.kind, args.clients, args.batch, args.duration, settle=True)}
    if args.compare_settle:
        runs["unsettled"] = measure(args.kind, args.clients, args.batch, args.duration, settle=False)
    for name, r in runs.items():
        loop = r["loop_cpu_us_per_item"]
        cpu = r["server_cpu_us_per_item"]
        print(
            f"{name:10s} {r['items_per_s']:7.0f} {args.kind}s/s  server CPU {cpu:4.0f} us/item"
            f"  event loop {loop:4.0f} us/item (bound {1e6 / max(loop, 1e-9):6.0f}/s)"
            f"  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  errors {r['errors']:.0f}"
        )
    if args.compare_settle:
        ratio = runs["settled"]["items_per_s"] / runs["unsettled"]["items_per_s"]
        print(f"settled / unsettled {args.kind}s/s: {ratio:.2f}")


if __name__ == "__main__":
    main()
