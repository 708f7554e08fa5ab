"""Where the time goes between two forward passes under closed-loop caption load (C clients x 1 text).

Starts the real app on the real model (ViT-B-32, random weights) as `python -m app` would, with two
probes that change nothing: the model seam wraps the embedder to time each text forward, and an ASGI
wrapper notes when each request reaches the app. Runs `bench.load --kind text` against it, then prints,
per cycle (the end of one forward to the start of the next), the medians and p10/p90 of: the first
and the last request arrival after the forward, the start of the next forward, the forward itself,
and its batch size. What lies between the end of a forward and the next is what the forward cannot
overlap: the answers going out, the next requests coming in (HTTP on both sides), the engine's waits.
127.0.0.1 only; prints figures, asserts nothing. The server gets this process's environment: e.g.
`GOMP_SPINCOUNT=300000 python -m bench.cycle` runs it with libgomp's default instead of what
`python -m app` sets.

Usage: python -m bench.cycle [--clients 16] [--duration 20] [--model ViT-B-32]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from scripts.procs import free_port, spawn, stop, wait_healthy

SECRET = "bench-cycle-secret"


def serve(port: int, out: str) -> None:
    """Run the app with the two probes (the child process); write the events to `out` as it shuts down."""
    import time

    import numpy as np
    import torch
    import uvicorn
    from starlette.types import Message, Receive, Scope, Send

    import app.__main__
    from app.inference.loading import load_clip
    from app.inference.model import Embedder
    from app.main import create_app
    from app.ops.heap import settle_heap
    from app.ops.logs import configure_logging
    from app.settings import Settings

    events: list[tuple[str, float, int]] = []
    now = time.perf_counter

    class Timed:
        """The real embedder; its text forwards are timed."""

        def __init__(self, inner: Embedder) -> None:
            self._inner = inner
            self.info = inner.info

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

        def encode_texts(self, tokens: list[torch.Tensor]) -> np.ndarray:
            events.append(("start", now(), len(tokens)))
            try:
                return self._inner.encode_texts(tokens)
            finally:
                events.append(("end", now(), 0))

    def fatal(reason: str) -> None:
        print(f"bench.cycle: the app failed to start: {reason}", file=sys.stderr)
        os._exit(1)  # the parent sees the child gone instead of waiting for /health

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, embedder_factory=lambda s: Timed(load_clip(s)), on_ready=settle_heap, on_fatal=fatal)

    async def probed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/embed/text":
            events.append(("arrival", now(), 0))
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def send_then_dump(message: Message) -> None:
            # The app has shut down (uvicorn's SIGTERM handling): the events are complete.
            if message["type"] == "lifespan.shutdown.complete":
                # Once, at shutdown: blocking the loop here costs nothing.
                with open(out, "w") as f:  # noqa: ASYNC230
                    json.dump(events, f)
            await send(message)

        await app(scope, receive, send_then_dump)

    uvicorn.run(probed, host="127.0.0.1", port=port, log_config=None, access_log=False)


def cycles(events: list[list]) -> list[dict[str, float]]:
    """Split the events at each forward's end; return one row per complete cycle, in ms from that end.

    A cycle's arrivals are those before the next forward starts: later ones belong to the batch after.
    """
    ends = [i for i, e in enumerate(events) if e[0] == "end"]
    rows = []
    for a, b in itertools.pairwise(ends):
        end = events[a][1]
        between = events[a + 1 : b]
        start = next((e for e in between if e[0] == "start"), None)
        if start is None:
            continue
        arrivals = [e[1] for e in between if e[0] == "arrival" and e[1] < start[1]]
        if not arrivals:
            continue
        rows.append(
            {
                "first arrival": (arrivals[0] - end) * 1e3,
                "last arrival": (arrivals[-1] - end) * 1e3,
                "next forward": (start[1] - end) * 1e3,
                "forward": (events[b][1] - start[1]) * 1e3,
                "batch": float(start[2]),
            }
        )
    return rows[len(rows) // 10 :]  # the first tenth: start-up, clients not yet in step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.out)
        return
    if not 1 <= args.clients <= 256 or not 1 <= args.duration <= 600:
        raise SystemExit("clients must be 1..256 and duration 1..600 s")
    port = free_port()
    env = os.environ | {
        "EMBEDDING_HMAC_SECRET": SECRET,
        "CLIP_MODEL": args.model,
        "CLIP_PRETRAINED": "none",
        "DEVICE": "cpu",
        "LOG_LEVEL": "warning",
        "CACHE_MAX_ENTRIES": "0",
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "events.json")
        server = spawn(["-m", "bench.cycle", "--serve", str(port), "--out", out], env)
        try:
            wait_healthy(f"http://127.0.0.1:{port}", time.monotonic() + 300, server)
            command = [
                sys.executable,
                "-m",
                "bench.load",
                "--json",
                "--server",
                f"http://127.0.0.1:{port}",
                "--kind",
                "text",
                "-c",
                str(args.clients),
                "--duration",
                str(args.duration),
            ]
            load = json.loads(subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout)
        finally:
            stop(server)
        if not os.path.exists(out):
            raise SystemExit(f"the server did not write its events (exit code {server.returncode}); load: {load}")
        with open(out) as f:
            rows = cycles(json.load(f))
    print(
        f"{args.clients} clients x 1 caption, {args.duration:.0f} s: {load['items_per_s']:.1f} texts/s, "
        f"p50 {load['p50_ms']:.0f} ms, errors {sum(load['errors'].values())}; {len(rows)} cycles"
    )
    print("ms after the end of a forward   median    p10    p90")
    for name in ("first arrival", "last arrival", "next forward", "forward", "batch"):
        values = sorted(r[name] for r in rows)
        if values:
            p10, p90 = values[len(values) // 10], values[len(values) * 9 // 10]
            print(f"{name:30s} {statistics.median(values):7.2f} {p10:6.2f} {p90:6.2f}")


if __name__ == "__main__":
    main()
