"""The exit codes README.pod.md lists are the ones `python -m app` uses, no more and no fewer."""

from __future__ import annotations

import re
from pathlib import Path

from app.ops.exits import ExitCode

README_POD = Path(__file__).resolve().parents[2] / "README.pod.md"


def test_exit_codes_in_readme_pod_are_exit_code_members():
    listed = [int(code) for code in re.findall(r"^\| `(\d+)` \|", README_POD.read_text(encoding="utf-8"), re.MULTILINE)]
    assert listed == [code.value for code in ExitCode]
