"""Read a running server's JSON log file: every complete line, never one still being written."""

from __future__ import annotations

import json
from pathlib import Path


def json_log(path: Path) -> list[dict]:
    """Return the JSON objects of the file's complete lines (a server may be writing the last one)."""
    text = path.read_text()
    lines = text.split("\n")[:-1]  # what follows the last newline is incomplete, or empty
    return [json.loads(line) for line in lines if line.startswith("{")]
