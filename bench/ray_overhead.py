"""What Ray Serve's HTTP proxy costs per request, and what a second replica buys, with a model of no cost.

The same app and stand-in model as bench/overhead.py (open_clip's tokenizer, a fixed vector at once), so
what is measured is the path around the model: the plain server (`create_app` under uvicorn, one
process) against the same app as a Serve deployment behind Serve's proxy, on a local Ray cluster on
127.0.0.1. Loads: captions and single tiny images (64x48 JPEGs from a local static server), one client
(latency: what the proxy adds to each request) and many (throughput), then 1 against 2 replicas.
Figures go to bench/README.md. 127.0.0.1 only; do not run it beside other heavy work (the machine's
cores are shared by every process measured).

`--plot PATH` also draws the caption sweep (items/s and p50 against clients, plain and Serve) into a PNG.

Usage: python -m bench.ray_overhead [--duration 8] [--plot ray.png]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.overhead import SERVER_ENV, tiny_photos
from bench.plot import Panel, machine_note, sweep_figure
from scripts.procs import free_port, spawn, stop, wait_healthy

APP_ENV = SERVER_ENV | {"HF_HUB_OFFLINE": "1"}
# (kind, clients): one client shows the latency each request pays; the caption sweep finds the concurrency
# past which one replica's throughput stops growing (the autoscaler's target_ongoing_requests).
LOADS = [("text", 1), ("image", 1), ("text", 4), ("text", 8), ("text", 16), ("text", 32), ("image", 16)]
SCALING_LOADS = [("text", 16), ("image", 16)]


def load(base: str, kind: str, clients: int, duration: float, photos: str) -> dict[str, float]:
    """Run bench.load against `base`; return items/s, p50, p99 and errors."""
    command = [sys.executable, "-m", "bench.load", "--json", "--server", base, "--kind", kind]
    command += ["-c", str(clients), "--duration", str(duration), "--photos", photos, "--glob", "*.jpg"]
    out = subprocess.run(command, env=os.environ | APP_ENV, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    return {k: result[k] for k in ("items_per_s", "p50_ms", "p99_ms")} | {"errors": sum(result["errors"].values())}


@contextmanager
def plain_server() -> Iterator[str]:
    """The stand-in app under uvicorn in a child process (bench/overhead.py's server)."""
    port = free_port()
    server = spawn(["-m", "bench.overhead", "--serve", str(port)], os.environ | APP_ENV)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", time.monotonic() + 120, server)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


Row = tuple[str, str, int, dict[str, float]]


def sweep_panels(rows: list[Row], kind: str = "text") -> tuple[Panel, Panel]:
    """Return the plot's panels: items/s and p50 against clients for `kind`, one line per arm."""
    rate, p50 = Panel(f"{kind}s/s"), Panel("p50 ms")
    for arm, row_kind, clients, figures in rows:
        if row_kind == kind:
            rate.add(arm, clients, figures["items_per_s"])
            p50.add(arm, clients, figures["p50_ms"])
    return rate, p50


def _stand_in(settings: object) -> object:
    from bench.overhead import StandIn

    return StandIn()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--plot", type=Path, help="also draw the caption sweep into this PNG")
    args = parser.parse_args()
    if not 1 <= args.duration <= 120:
        raise SystemExit("duration must be 1..120 s")
    from tests.support.ray_serve import deploy, local_cluster

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as photos, tempfile.TemporaryDirectory() as ray_dir:
        tiny_photos(photos)
        with plain_server() as base:
            for kind, clients in LOADS:
                rows.append(("plain", kind, clients, load(base, kind, clients, args.duration, photos)))
        with local_cluster(APP_ENV, Path(ray_dir)) as cluster:
            for replicas in (1, 2):
                deploy(_stand_in, num_replicas=replicas, autoscaling_config=None)
                for kind, clients in LOADS if replicas == 1 else SCALING_LOADS:
                    figures = load(cluster.base, kind, clients, args.duration, photos)
                    rows.append((f"ray, {replicas} replica(s)", kind, clients, figures))
    print(f"{'arm':22s} {'load':6s} {'clients':>7s} {'items/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} errors")
    for arm, kind, clients, r in rows:
        print(
            f"{arm:22s} {kind:6s} {clients:7d} {r['items_per_s']:8.0f} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {r['errors']:.0f}"
        )
    if args.plot:
        title = "bench.ray_overhead: captions, stand-in model, plain server and Ray Serve"
        note = f"{args.duration:g} s per load; {machine_note()}"
        print(f"plot: {sweep_figure(args.plot, title, 'clients', sweep_panels(rows), note, log_x=True)}")


if __name__ == "__main__":
    main()
