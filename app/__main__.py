"""Run the service: `python -m app` (settings from the environment); WORKERS > 1 runs that many processes
(and, with ENGINE_PROCESS, one engine process per GPU that holds the model).

SIGTERM, SIGINT and SIGQUIT drain the service first (see app.ops.lifecycle); the exit codes are
app.ops.exits.ExitCode: 0 after a drain, 1 when the model could not load, 2 on an invalid setting or no
usable temporary folder, 3 when HOST:PORT cannot be listened on.
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

from app.ops.exits import ExitCode, StartupError
from app.ops.listen import check_port
from app.ops.logs import configure_logging
from app.settings import Settings

if TYPE_CHECKING:
    from app.main import EmbedderFactory

log = logging.getLogger("app")
# uvicorn's exit status when the app's start-up raised (or, after check_port, a race for the port).
_UVICORN_STARTUP_FAILURE = 3


def _settings_or_exit() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]
        print("invalid configuration:\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(ExitCode.BAD_SETUP) from None


def main(embedder_factory: EmbedderFactory | None = None) -> int:
    """Serve until a stop signal; return the exit code (`embedder_factory`: the model seam of tests and benchmarks)."""
    settings = _settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    for warning in settings.startup_warnings():
        log.warning(warning)
    try:
        # Before any model loads or worker starts: a port in use must not cost a model load, or hang.
        check_port(settings.resolved_host, settings.port)
        if settings.workers > 1 or settings.engine_process_on():
            # The supervisor loads neither torch nor the metrics library: the workers it forks do, and the
            # engine processes (ENGINE_PROCESS) it starts.
            from app.ops.supervisor import run_pod

            return run_pod(settings, embedder_factory)
        return serve_one(settings, embedder_factory)
    except StartupError as exc:
        log.error("start-up failed: %s", exc.message)
        return exc.exit_code


def serve_one(settings: Settings, embedder_factory: EmbedderFactory | None = None) -> int:
    """Serve in this one process until a stop signal; return the exit code (`embedder_factory`: the benchmarks' seam)."""
    import uvicorn

    from app.inference.loading import load_clip
    from app.main import create_app
    from app.ops.heap import settle_heap
    from app.ops.lifecycle import DrainingServer, Lifecycle

    exit_code = ExitCode.STOPPED

    def on_fatal(reason: str) -> None:
        nonlocal exit_code
        exit_code = ExitCode.START_FAILED
        server.stop_now()

    lifecycle = Lifecycle()
    factory = embedder_factory or load_clip
    app = create_app(settings, embedder_factory=factory, on_fatal=on_fatal, on_ready=settle_heap, lifecycle=lifecycle)
    config = uvicorn.Config(app, host=settings.resolved_host, port=settings.port, log_config=None, access_log=False)
    server = DrainingServer(config, lifecycle, grace_s=settings.shutdown_grace_s)
    try:
        server.run()
    except SystemExit as exc:
        if exc.code != _UVICORN_STARTUP_FAILURE:
            raise
        # uvicorn logged why: the app's start-up raised, or the port was taken after check_port.
        return ExitCode.START_FAILED if server.lifespan.should_exit else ExitCode.PORT_UNAVAILABLE
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
