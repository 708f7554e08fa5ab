"""compose.yaml's health check, run as written against a live service (the image runs the same command)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.service import RunningService

ROOT = Path(__file__).resolve().parents[2]


def _probe(port: int, path: str | None = None) -> subprocess.CompletedProcess[str]:
    test = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))["services"]["pod"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    command = [sys.executable, *test[2:-1], path or test[-1]]
    env = os.environ | {"PORT": str(port)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


def _port(service: RunningService) -> int:
    return int(service.base.rsplit(":", 1)[1])


def test_compose_healthcheck_passes_on_a_ready_service(service):
    run = _probe(_port(service))
    assert (run.returncode, run.stderr) == (0, "")


def test_compose_healthcheck_fails_on_a_path_the_app_lacks(service):
    run = _probe(_port(service), "/no-such-probe")
    assert run.returncode == 1
    assert "HTTP 404" in run.stderr
