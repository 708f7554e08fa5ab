"""The input of `embed-list`: one image a line, a URL or a local file path; row i of the output is line i+1.

- `http://…`, `https://…` (any `scheme://` but `file://`) and `data:…` lines are sent as they are,
  the service fetching (or refusing) them;
- `file:///abs/path.jpg` and every other line is a local file path (`~` expanded, relative to the
  current directory), read here and sent inline;
- blank lines and lines starting with `#` are skipped: their rows stay zero, they are not failures.

Leading and trailing white space is stripped; the file is UTF-8 (a byte-order mark is ignored), and
lines end with `\\n` (a `\\r` before it is dropped), so its rows match what `wc -l` or an editor counts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote, urlsplit

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class Kind(StrEnum):
    URL = "url"
    FILE = "file"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Entry:
    """One line: its 0-based row, the line as written (stripped), and what to embed."""

    row: int
    text: str
    kind: Kind
    target: str  # the URL to send, or the path to read; "" when skipped

    @property
    def line(self) -> int:
        """Return the 1-based line number."""
        return self.row + 1


def parse_line(row: int, raw: str) -> Entry:
    """Classify one line of the list."""
    text = raw.strip()
    if not text or text.startswith("#"):
        return Entry(row, text, Kind.SKIP, "")
    if text[:5].lower() == "data:":
        return Entry(row, text, Kind.URL, text)
    if _SCHEME_RE.match(text):
        if text[:7].lower() != "file://":
            return Entry(row, text, Kind.URL, text)
        return Entry(row, text, Kind.FILE, unquote(urlsplit(text).path))
    return Entry(row, text, Kind.FILE, os.path.expanduser(text))


def split_lines(content: str) -> list[str]:
    """Split on `\\n` only (not the other breaks `str.splitlines` knows); no row for a final newline."""
    if not content:
        return []
    lines = content.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_entries(content: bytes) -> list[Entry]:
    """Return the entries of a list file's bytes, one per line."""
    return [parse_line(row, line) for row, line in enumerate(split_lines(content.decode("utf-8-sig")))]
