"""End to end through `python -m app`, one server per group of settings: what each group buys.

For each group (--configs) one server starts; then, one after the other: 1 MP and tiny (64x48) JPEGs
sent as uploads (no download in the way) and as URLs from local static servers (C=32 x B=32), and a
lone client's single 1 MP upload. Each load prints images/s, p50/p99, the server's CPU per image (its
event loop's apart), and how busy the GPU was (nvidia-smi, sampled every 200 ms). With --profile,
py-spy samples the server (native frames too) under tiny uploads and prints the frames where its CPU
went (a load of its own: the sampling pauses the server). The embedding cache is off (the loads repeat
their photos).

Usage: python -m bench.gpu_e2e --model ViT-B-32 --device cuda [--configs before,host,gpu] [--duration 10]
           [--photos DIR] [--profile]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import uvloop

from bench import photos as photo_sets
from bench import static
from bench.load import Uploads, run_load
from bench.procs import GpuBusy, cpu_seconds
from scripts.procs import free_port, spawn, stop, wait_healthy

# The settings that issue 24's fixes are behind; each group adds to the one before it.
HOST_FIXES = {"TORCH_THREADS": "1", "CUDA_BLOCKING_WAIT": "1", "IMAGE_PREPROCESS": "pil-uint8", "ENGINE_OVERLAP": "1"}
CONFIGS = {
    "before": {},
    "host": HOST_FIXES,
    "tensor": HOST_FIXES | {"IMAGE_PREPROCESS": "tensor"},
    "gpu": HOST_FIXES | {"IMAGE_PREPROCESS": "tensor", "JPEG_DECODE": "engine"},
    # torch.compile (CUDA graphs) for every batch size bucket: minutes of start-up, so not in gpu_check's run.
    "compiled": HOST_FIXES | {"IMAGE_PREPROCESS": "tensor", "JPEG_DECODE": "engine", "ENGINE_COMPILE": "1"},
}
# (label, photo set, uploads?, clients, images per request)
LOADS = [
    ("1 MP uploads", "1mp", True, 32, 32),
    ("tiny uploads", "tiny", True, 32, 32),
    ("1 MP URLs", "1mp", False, 32, 32),
    ("tiny URLs", "tiny", False, 32, 32),
    ("idle 1 MP upload", "1mp", True, 1, 1),
]


def py_spy() -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    for candidate in (shutil.which("py-spy"), beside, "/tmp/site/bin/py-spy"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    binary = py_spy()
    if binary is None:
        print("profile: py-spy not found")
        return None
    args = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "97"]
    args += ["--native", "--format", "raw", "--output", str(out)]  # native frames need the process paused
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def print_profile(proc: subprocess.Popen[bytes], out: Path, top: int = 14) -> None:
    """Print the frames where the sampled CPU went: by the frame running (self) and by any frame on the stack."""
    _, err = proc.communicate(timeout=60)
    if proc.returncode != 0 or not out.exists():
        print(f"profile: py-spy failed ({err.decode(errors='replace').strip()[-200:]})")
        return
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        own[re.sub(r"^0x[0-9a-f]+ ", "", frames[-1])] += n  # an unnamed native frame: by its library
        # The service's functions on the stack (any line of theirs; the first frame names the thread).
        for function in {re.sub(r":\d+\)$", ")", f) for f in frames[1:] if "(app/" in f}:
            ours[function] += n
    print(f"profile: {total} samples of busy threads; the frames running, then the service's frames on the stack:")
    for label, counter in (("self", own), ("app ", ours)):
        for frame, n in counter.most_common(top):
            print(f"  {label} {100 * n / max(1, total):5.1f}%  {frame[:150]}")


def profile(base: str, pid: int, folder: str, secret: str, duration: float) -> None:
    """Load the server with tiny uploads once more, and sample it meanwhile (the pauses slow it: no figures)."""
    out = Path(tempfile.gettempdir()) / f"spy-{pid}.txt"
    proc = start_profile(pid, max(2.0, duration - 2), out)
    if proc is None:
        return
    uploads = Uploads([f.read_bytes() for f in sorted(Path(folder).glob("*.jpg"))], 32)
    uvloop.run(run_load(base, "image", 32, 32, duration, [], secret, uploads))
    print_profile(proc, out)


def run_config(name: str, env: dict[str, str], folders: dict[str, str], args: argparse.Namespace) -> None:
    port = free_port()
    server_env = env | CONFIGS[name] | {"PORT": str(port)}
    log = Path(tempfile.gettempdir()) / f"gpu-e2e-{name}.log"
    server = spawn(["-m", "app"], server_env, log)
    statics: list[subprocess.Popen[bytes]] = []
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        wait_healthy(base, time.monotonic() + (900 if "ENGINE_COMPILE" in CONFIGS[name] else 180), server, log)
        settings = " ".join(f"{k}={v}" for k, v in CONFIGS[name].items()) or "the defaults"
        print(f"== {name}: {settings} (ready in {time.monotonic() - started:.0f} s)")
        ports = {kind: [free_port() for _ in range(4)] for kind in folders}
        for kind, kind_ports in ports.items():
            statics += [static.start(folders[kind], "*.jpg", p) for p in kind_ports]
        for label, kind, upload, clients, batch in LOADS:
            files = sorted(Path(folders[kind]).glob("*.jpg"))
            uploads = Uploads([f.read_bytes() for f in files], batch) if upload else None
            urls = [f"http://127.0.0.1:{p}/{f.name}" for f in files for p in ports[kind]]
            duration = args.duration / 2 if clients == 1 else args.duration
            cpu0, loop0 = cpu_seconds(server.pid), cpu_seconds(server.pid, server.pid)
            with GpuBusy() as gpu:
                result = uvloop.run(
                    run_load(base, "image", clients, batch, duration, urls, env["EMBEDDING_HMAC_SECRET"], uploads)
                )
            cpu, loop = cpu_seconds(server.pid) - cpu0, cpu_seconds(server.pid, server.pid) - loop0
            items = max(1.0, result["items_per_s"] * result["seconds"])
            busy = f"{gpu.percent:3.0f}%" if gpu.percent is not None else "n/a"
            print(
                f"{label:17s} {result['items_per_s']:7.0f} images/s  p50 {result['p50_ms']:7.1f} ms  "
                f"p99 {result['p99_ms']:7.1f} ms  server CPU {cpu / items * 1e6:6.0f} µs/image "
                f"({cpu / result['seconds']:4.1f} cores; loop {loop / items * 1e6:5.0f} µs/image)  GPU busy {busy}"
                + (f"  errors {result['errors']}" if result["errors"] else "")
            )
        if args.profile:
            profile(base, server.pid, folders["tiny"], env["EMBEDDING_HMAC_SECRET"], args.duration)
    finally:
        stop(*statics, server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--configs", default="before,host,gpu", help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load (the idle one: half)")
    parser.add_argument("--photos", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "photos"))
    parser.add_argument("--profile", action="store_true", help="py-spy the server under tiny uploads")
    args = parser.parse_args()
    env = dict(os.environ) | {
        "EMBEDDING_HMAC_SECRET": secrets.token_hex(32),
        "CLIP_MODEL": args.model,
        "CLIP_PRETRAINED": "none",
        "DEVICE": args.device,
        "ALLOW_PRIVATE_URLS": "1",
        "HOST": "127.0.0.1",
        "CACHE_MAX_ENTRIES": "0",
        "MAX_BATCH_SIZE": "64",
        "DOWNLOAD_CONCURRENCY": "128",
        "LOG_LEVEL": "warning",
    }
    with tempfile.TemporaryDirectory() as folder:
        real = photo_sets.from_folder(args.photos, "*-1mp.jpg")
        photo_sets.write(f"{folder}/1mp", real or photo_sets.generated_1mp(), "photo")
        photo_sets.write(f"{folder}/tiny", photo_sets.tiny(), "tiny")
        print(
            f"1 MP photos: {'real, from ' + args.photos if real else 'generated'}; server settings beside each group's: "
            f"ENGINE_MAX_BATCH={os.environ.get('ENGINE_MAX_BATCH', 'its default')}, cache off"
        )
        for name in args.configs.split(","):
            run_config(name, env, {"1mp": f"{folder}/1mp", "tiny": f"{folder}/tiny"}, args)


if __name__ == "__main__":
    main()
