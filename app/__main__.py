"""Run the service: `python -m app` (settings from the environment)."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from app.main import create_app
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
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    exit_code = 0

    def on_fatal(reason: str) -> None:
        nonlocal exit_code
        exit_code = 1
        server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    server.run()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
