"""Run the service: `python -m app` (settings from the environment).

SIGTERM/SIGINT drain the service first (see app.ops.lifecycle); the exit code is 0 after a drain,
1 when the model could not load, 2 on invalid settings.
"""

from __future__ import annotations

import os

# libgomp reads this once, as torch loads it, so it is set before any import that loads torch. Its
# default (300,000 spins) keeps torch's idle OpenMP threads on the cores for milliseconds after every
# forward pass, just when the event loop and the decode threads need them: under 16 caption clients on
# 2 cores the next forward started 7.5 ms after the last one instead of 10.4-10.8 ms (python -m
# bench.cycle; README, Throughput). A value in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import sys

import uvicorn
from pydantic import ValidationError

from app.main import create_app
from app.ops.heap import settle_heap
from app.ops.lifecycle import DrainingServer, Lifecycle
from app.ops.logs import configure_logging
from app.settings import Settings


def _settings_or_exit() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]
        print("invalid configuration:\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None


def main() -> int:
    settings = _settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    exit_code = 0

    def on_fatal(reason: str) -> None:
        nonlocal exit_code
        exit_code = 1
        server.should_exit = True

    lifecycle = Lifecycle()
    app = create_app(settings, on_fatal=on_fatal, on_ready=settle_heap, lifecycle=lifecycle)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
    server = DrainingServer(config, lifecycle, grace_s=settings.shutdown_grace_s)
    server.run()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
