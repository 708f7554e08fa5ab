"""Run `python handler.py --rp_serve_api` (the runpod SDK's local API) in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.stubs import free_port

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def run_handler_api(env: dict[str, str], startup_s: float = 120) -> Iterator[str]:
    """Start the handler's local API with `env` added; yield its base URL; stop it afterwards."""
    port = free_port()
    full_env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'client'}"} | env
    cmd = [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]
    # A file, not a pipe: a chatty server can never block on it. Closed in the finally below.
    log = tempfile.TemporaryFile()  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                output = log.read().decode(errors="replace")
                raise RuntimeError(f"handler exited with {proc.returncode}:\n{output[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/openapi.json", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("handler API did not start in time")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()
