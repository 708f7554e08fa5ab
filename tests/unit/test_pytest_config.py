"""The project's pytest configuration: what `make test` prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pytest_config_prints_each_skip_reason(tmp_path):
    # `make test` runs plain `python -m pytest`: a test skipped for a missing tool must say so there,
    # not only in CI.
    (tmp_path / "test_needs_a_tool.py").write_text(
        "import pytest\n\n\ndef test_tool():\n    pytest.skip('promtool not on PATH')\n", encoding="utf-8"
    )
    config = ROOT / "pyproject.toml"
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}  # the config's own options only
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(config), "--rootdir", str(tmp_path), "test_needs_a_tool.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SKIPPED [1] test_needs_a_tool.py:5: promtool not on PATH" in run.stdout.splitlines()
