"""The single-pod path stays free of Ray: `python -m app` serves without ever loading it."""

from __future__ import annotations

from pathlib import Path

from scripts.procs import app_server
from tests.support.data import TINY_APP_ENV


def loaded_files(pid: int) -> set[str]:
    """Return the files a running process has mapped (its shared libraries among them)."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}


def test_python_m_app_serves_without_loading_ray(tmp_path):
    with app_server(TINY_APP_ENV, log=tmp_path / "app.log", timeout_s=120) as (process, _):
        files = loaded_files(process.pid)
    assert any("/torch/" in f for f in files)  # the check sees the libraries Python imported
    assert not [f for f in files if "/ray/" in f or "_raylet" in f]
