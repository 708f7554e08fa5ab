"""Run `python handler.py --rp_serve_api` (the runpod SDK's local API) in a subprocess."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scripts.procs import free_port, serving


@contextmanager
def run_handler_api(env: dict[str, str], startup_s: float = 120) -> Iterator[str]:
    """Start the handler's local API with `env` added; yield its base URL; stop it afterwards."""
    port = free_port()
    args = ["handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]
    with (
        tempfile.TemporaryDirectory() as folder,
        serving(
            args,
            os.environ | env,
            port,
            log=Path(folder, "handler.log"),
            ready_path="/openapi.json",
            timeout_s=startup_s,
        ) as (_, base),
    ):
        yield base
