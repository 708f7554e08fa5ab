"""The characters an image URL may hold: printable ones only, and no space at either end.

The signature covers a URL as sent, but yarl, which parses the URLs fetched, drops tabs and
newlines wherever they are and a leading space, and percent-encodes other control characters. A
newline inside one URL of a batch also makes the batch's payload id (its URLs joined with `\n`) that
of two URLs: a batch signed for `[a, b]` would verify as the one URL `a\nb`. So a URL holding a
character that is not printable (`str.isprintable`: control, format and invisible characters,
separators other than the space, private-use and unassigned code points) or starting or ending
with a space is refused before anything else, with `invalid_url`. Other non-ASCII characters and
inner spaces are percent-encoded as UTF-8, as browsers do.
"""

from __future__ import annotations

_FIX = "percent-encode it (e.g. %0A for a newline), or send each URL as its own item"


def url_text_problem(url: str) -> str | None:
    """Return why `url` cannot be taken as sent, or None when every character may stay as it is."""
    if url.isprintable() and not url.startswith(" ") and not url.endswith(" "):
        return None
    if url.startswith(" ") or url.endswith(" "):
        return "the URL starts or ends with a space: remove it"
    index = _first_unprintable(url)
    return f"the URL holds U+{ord(url[index]):04X}, an invisible or control character, at index {index}: {_FIX}"


def _first_unprintable(text: str) -> int:
    """Return the index of the first character of `text` that is not printable (there is one)."""
    # Halving with the C-speed test, not a Python loop over every character: a data URI is megabytes.
    low, high = 0, len(text)
    while high - low > 1:
        middle = (low + high) // 2
        if text[low:middle].isprintable():
            low = middle
        else:
            high = middle
    return low
