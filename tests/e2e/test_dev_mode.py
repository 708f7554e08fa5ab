"""Development mode as a newcomer runs it: `python -m app` with the development flags and no HOST."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scripts.procs import free_port, serving

START_S = 60
# What a newcomer's shell may hold is dropped: each test says what it sets.
_CLEARED = ("HOST", "PORT", "EMBEDDING_HMAC_SECRET", "ALLOW_INSECURE_AUTH", "ALLOW_PRIVATE_URLS")


def _env(port: int, **settings: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    tiny = {"CLIP_MODEL": "clip-tiny", "CLIP_PRETRAINED": "none", "DEVICE": "cpu", "LOG_FORMAT": "json"}
    return base | tiny | {"PORT": str(port), "HF_HUB_OFFLINE": "1"} | settings


def _log_lines(log_path: Path) -> list[dict[str, object]]:
    lines = []
    for raw in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue  # a line written by something other than the app's logger
    return lines


def _messages(log_path: Path, level: str | None = None) -> list[str]:
    return [str(line.get("msg")) for line in _log_lines(log_path) if level is None or line.get("level") == level]


@pytest.mark.parametrize(
    "flags",
    [{"ALLOW_INSECURE_AUTH": "1"}, {"ALLOW_INSECURE_AUTH": "1", "ALLOW_PRIVATE_URLS": "1"}],
)
def test_dev_mode_listens_on_loopback_without_host(tmp_path, flags):
    port, log = free_port(), tmp_path / "app.log"
    # `serving` returns once /live answers on 127.0.0.1:port, and stops the server afterwards.
    with serving(["-m", "app"], _env(port, **flags), port, log=log, ready_path="/live", timeout_s=START_S):
        pass
    running = [m for m in _messages(log) if m.startswith("Uvicorn running on")]
    assert running == [f"Uvicorn running on http://127.0.0.1:{port} (Press CTRL+C to quit)"]
    assert not any("DEVELOPMENT MODE ON AN OPEN ADDRESS" in m for m in _messages(log, "warning"))


def test_server_logs_short_secret_warning_without_the_secret(tmp_path):
    port, log, secret = free_port(), tmp_path / "app.log", "short-but-secret"
    env = _env(port, EMBEDDING_HMAC_SECRET=f"{'f' * 64},{secret}", HOST="127.0.0.1")
    with serving(["-m", "app"], env, port, log=log, ready_path="/live", timeout_s=START_S):
        pass
    warnings = _messages(log, "warning")
    assert any(m.startswith("EMBEDDING_HMAC_SECRET key 2 of 2 is 16 characters") for m in warnings), warnings
    assert secret not in log.read_text(encoding="utf-8")
