"""Run the service: `python -m app` (settings from the environment); WORKERS > 1 runs that many processes.

SIGTERM/SIGINT drain the service first (see app.ops.lifecycle); the exit code is 0 after a drain,
1 when the model could not load, 2 on invalid settings.
"""

from __future__ import annotations

import os

from app.settings import OPENMP_SPIN_COUNT

# libgomp reads it once, as torch loads it, so it is set before any import that loads torch (app.settings
# loads none). Its own default keeps torch's idle OpenMP threads spinning on the cores after every forward
# pass, just when the event loop and the decode threads need them (docs/performance.md). A value in the
# environment wins.
os.environ.setdefault(OPENMP_SPIN_COUNT.name, OPENMP_SPIN_COUNT.default)

import logging
import sys
from typing import TYPE_CHECKING

from pydantic import ValidationError

from app.ops.logs import configure_logging
from app.settings import Settings

if TYPE_CHECKING:
    from app.main import EmbedderFactory

log = logging.getLogger("app")


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
    for warning in settings.startup_warnings():
        log.warning(warning)
    if settings.workers > 1:
        # The supervisor loads neither torch nor the metrics library: the workers it forks do.
        from app.ops.workers import run_pod

        return run_pod(settings)
    return serve_one(settings)


def serve_one(settings: Settings, embedder_factory: EmbedderFactory | None = None) -> int:
    """Serve in this one process until SIGTERM; return the exit code (`embedder_factory`: the benchmarks' seam)."""
    import uvicorn

    from app.inference.loading import load_clip
    from app.main import create_app
    from app.ops.heap import settle_heap
    from app.ops.lifecycle import DrainingServer, Lifecycle

    exit_code = 0

    def on_fatal(reason: str) -> None:
        nonlocal exit_code
        exit_code = 1
        server.should_exit = True

    lifecycle = Lifecycle()
    factory = embedder_factory or load_clip
    app = create_app(settings, embedder_factory=factory, on_fatal=on_fatal, on_ready=settle_heap, lifecycle=lifecycle)
    config = uvicorn.Config(app, host=settings.resolved_host, port=settings.port, log_config=None, access_log=False)
    server = DrainingServer(config, lifecycle, grace_s=settings.shutdown_grace_s)
    server.run()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
