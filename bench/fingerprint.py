"""What fingerprinting the embedding space costs at load: hashing the weights (app.inference.fingerprint).

Loads an open_clip model (random weights: only the bytes' count matters), then times `weights_sha256`
with its threads and on one thread, against the model's own load time, in one run.

Usage: python -m bench.fingerprint [--model ViT-B-32] [--device cpu] [--dtype fp32] [--repeats 3]
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import torch

from app.inference import fingerprint
from app.inference.model import ClipEmbedder


def best_of(repeats: int, model: torch.nn.Module) -> float:
    """Return the fastest of `repeats` runs of weights_sha256, in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fingerprint.weights_sha256(model)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    embedder = ClipEmbedder(args.model, "none", args.device, precision=args.dtype)
    load_s = time.perf_counter() - started
    weights = embedder.model.state_dict().values()
    mib = sum(t.numel() * t.element_size() for t in weights) / 2**20
    threaded = best_of(args.repeats, embedder.model)
    fingerprint._HASH_THREADS = 1
    single = best_of(args.repeats, embedder.model)
    print(
        f"{args.model} {args.dtype} on {args.device}: {mib:.0f} MiB of weights; load {load_s:.2f} s (digest included)"
    )
    print(f"weights_sha256: {threaded:.2f} s ({mib / threaded:.0f} MiB/s) with up to 8 threads, {single:.2f} s on one")
    print(f"share of the load: {threaded / load_s:.0%}")


if __name__ == "__main__":
    main()
