"""Run the service: `python -m app` (settings from the environment).

SIGTERM/SIGINT drain the service first (see app.lifecycle); the exit code is 0 after a drain,
1 when the model could not load, 2 on invalid settings.
"""

from __future__ import annotations

import os

# libgomp reads this once, as torch loads it, so it is set before any import that loads torch. Its
# default (300,000 spins) keeps torch's OpenMP threads spinning on the cores for milliseconds after
# every forward pass, while the event loop and the decode threads need them: traces of 16 caption
# clients on 2 cores put the next batch's first request 2.6 ms after a forward instead of 4.8-5.3 ms,
# and the whole gap between two forwards at 7.5-7.7 ms instead of 9.9-11.1 ms. The forward itself
# did not slow (bench.limit, 2 interleaved pairs). A value in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import sys  # noqa: E402

import uvicorn  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from app.heap import settle_heap  # noqa: E402
from app.lifecycle import DrainingServer, Lifecycle  # noqa: E402
from app.logs import configure_logging  # noqa: E402
from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402


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
