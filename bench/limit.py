"""The compute limit: pure model throughput and decode cost, measured in this process.

Prints a table and, with --json, one JSON object (bench/run.sh reads it):
- encode_image items/s at batch 64 (and 16, the largest batch 16 closed-loop clients can form, and 1)
  on preprocessed tensors;
- encode_text items/s at batch 64: open_clip's 77-token forward vs the padding-free forward on short
  captions (about 10 tokens), and the padding-free forward at batch 16;
- decode + preprocess ms per image on one core for each photo size, full vs reduced-size decoding.

Usage: python -m bench.limit [--model ViT-B-32] [--device cpu] [--photos ../shared/photos] [--json]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable

import torch

from app.inference.decode import decode_image
from app.inference.model import ClipEmbedder

CAPTIONS = [
    "a photo of a cat on a sofa",
    "a red car parked on the street",
    "two people walking on a beach",
    "a bowl of fruit on a table",
]


def rate(fn: Callable[[], object], items: int, min_seconds: float, sync: Callable[[], None]) -> float:
    """Return items/s of `fn`, run after one warm-up call until `min_seconds` have passed."""
    fn()
    sync()
    runs, started = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        sync()
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds and runs >= 2:
            return runs * items / elapsed


def decode_costs(embedder: ClipEmbedder, folder: str, repeats: int) -> dict[str, dict[str, float]]:
    """Return ms per image (one thread) by photo size, for full and reduced-size decoding."""
    torch.set_num_threads(1)
    groups: dict[str, list[bytes]] = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(folder, "*.jpg"))):
        match = re.search(r"-(native|1mp|2mp|12mp)\.jpg$", path)
        if match:
            with open(path, "rb") as f:
                groups[match.group(1)].append(f.read())
    size = embedder.info.image_size
    costs: dict[str, dict[str, float]] = {}
    for group in ("native", "1mp", "2mp", "12mp"):
        datas = groups.get(group)
        if not datas:
            continue
        costs[group] = {}
        for mode, draft in (("full", None), ("reduced", size)):
            started = time.perf_counter()
            for _ in range(repeats):
                for data in datas:
                    embedder.preprocess(decode_image(data, max_pixels=10**9, draft_size=draft))
            costs[group][mode] = (time.perf_counter() - started) * 1000 / (repeats * len(datas))
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--photos", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "photos"))
    parser.add_argument("--seconds", type=float, default=8.0, help="minimum time per throughput figure")
    parser.add_argument("--batches", default="64,16,1", help="image batch sizes to measure")
    parser.add_argument("--decode-repeats", type=int, default=3)
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the image tower (fixed batch sizes)")
    parser.add_argument(
        "--torch-kernels",
        action="store_true",
        help="keep torch's own linear layers on CPU (the server's CPU_PACKED_LINEAR=0)",
    )
    parser.add_argument("--no-text", action="store_true")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode costs per photo size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    sizes = [int(x) for x in args.batches.split(",")]
    embedder = ClipEmbedder(
        args.model,
        "none",
        args.device,
        precision=args.dtype,
        buckets=tuple(sizes) if args.compile else (),
        compile=args.compile,
        packed_linear=not args.torch_kernels,
    )
    sync = torch.cuda.synchronize if embedder.device.type == "cuda" else (lambda: None)
    hw = embedder.info.image_size
    out: dict[str, object] = {
        "model": args.model,
        "device": str(embedder.device),
        "dtype": embedder.info.dtype,
        "compiled": args.compile,
        "kernels": embedder.info.kernels,
        "torch_threads": torch.get_num_threads(),
    }

    for b in sizes:
        pixels = [torch.randn(3, hw, hw) for _ in range(b)]
        out[f"image_b{b}_per_s"] = rate(lambda px=pixels: embedder.encode_images(px), b, args.seconds, sync)

    if args.no_text:
        print(json.dumps(out) if args.json else out)
        return
    # Numbered like bench.load's captions (which are numbered to be distinct), so the lengths match.
    short = [embedder.tokenize(f"{CAPTIONS[i % len(CAPTIONS)]} {1000 + i}") for i in range(64)]
    tokens = torch.stack(short).to(embedder.device)
    out["caption_tokens"] = int((tokens != 0).sum(dim=1).float().mean().item())
    with torch.inference_mode():
        out["text_full77_b64_per_s"] = rate(lambda: embedder.model.encode_text(tokens), 64, args.seconds, sync)
    out["text_truncated_b64_per_s"] = rate(lambda: embedder.encode_texts(short), 64, args.seconds, sync)
    # 16 closed-loop clients can never form a batch larger than 16: the most they could reach.
    out["text_truncated_b16_per_s"] = rate(lambda: embedder.encode_texts(short[:16]), 16, args.seconds, sync)
    out["text_speedup"] = out["text_truncated_b64_per_s"] / out["text_full77_b64_per_s"]

    if os.path.isdir(args.photos) and not args.no_decode:
        out["decode_ms_per_image_one_core"] = decode_costs(embedder, args.photos, args.decode_repeats)

    if args.json:
        print(json.dumps(out))
        return
    for key, value in out.items():
        print(f"{key:32s} {json.dumps(value) if isinstance(value, dict) else value}")


if __name__ == "__main__":
    main()
