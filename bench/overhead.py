"""The HTTP layer's cost per request: the real app in front of a stand-in model that costs nothing.

The stand-in keeps open_clip's real tokenizer and returns a fixed vector at once, so what is measured
is what every request pays besides the forward pass: HTTP, validation, signature, tokenising,
queueing, the answer. On a GPU that cost, not the model, bounds small requests. Prints requests/s
at saturation and the server's CPU per request; `--compare-settle` runs it with and without
`app.heap.settle_heap` (what `python -m app` applies once the model is ready) and prints the ratio.
Compare code changes by running it in each checkout. 127.0.0.1 only; Linux (/proc) for CPU times.

Usage: python -m bench.overhead [--clients 32] [--duration 10] [--compare-settle]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import open_clip
import torch
from PIL import Image

from bench.procs import free_port, stop, wait_healthy

SECRET = "bench-overhead-secret"


class StandIn:
    """A model of no cost: open_clip's tokenizer, a fixed 512-d vector for every input."""

    def __init__(self) -> None:
        from app.model import ModelInfo

        self.info = ModelInfo("stand-in", "none", "cpu", "float32", 512, image_size=224, context_length=77)
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

    from app.heap import settle_heap
    from app.logs import configure_logging
    from app.main import create_app
    from app.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, embedder_factory=lambda _: StandIn(), on_ready=settle_heap if settle else None)
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(clients: int, duration: float, settle: bool) -> dict[str, float]:
    """Start a server, load it with captions for `duration` s, return its figures."""
    port = free_port()
    env = os.environ | {
        "EMBEDDING_HMAC_SECRET": SECRET, "CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": "none", "DEVICE": "cpu",
        "LOG_LEVEL": "warning", "CACHE_MAX_ENTRIES": "0",
    }
    args = [sys.executable, "-m", "bench.overhead", "--serve", str(port)] + ([] if settle else ["--no-settle"])
    server = subprocess.Popen(args, env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server, 60)
        before = _cpu_s(server.pid)
        load = subprocess.run(
            [sys.executable, "-m", "bench.load", "--json", "--server", f"http://127.0.0.1:{port}", "--kind", "text",
             "-c", str(clients), "--duration", str(duration)],
            env=env, capture_output=True, text=True, check=True,
        )
        cpu = _cpu_s(server.pid) - before
    finally:
        stop(server)
    result = json.loads(load.stdout)
    return {
        "requests_per_s": result["items_per_s"],
        "server_cpu_us_per_request": cpu / max(1, result["requests"]) * 1e6,
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "errors": sum(result["errors"].values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
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
    runs = {"settled": measure(args.clients, args.duration, settle=True)}
    if args.compare_settle:
        runs["unsettled"] = measure(args.clients, args.duration, settle=False)
    for name, r in runs.items():
        print(f"{name:10s} {r['requests_per_s']:7.0f} requests/s  server CPU {r['server_cpu_us_per_request']:4.0f} us/request"
              f"  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  errors {r['errors']:.0f}")
    if args.compare_settle:
        ratio = runs["settled"]["requests_per_s"] / runs["unsettled"]["requests_per_s"]
        print(f"settled / unsettled requests/s: {ratio:.2f}")


if __name__ == "__main__":
    main()
