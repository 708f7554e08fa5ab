"""The search results as one self-contained HTML page: thumbnails inline as data: URIs, no other file needed."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from examples.visual_search.sources import clock
from examples.visual_search.store import Hit

_STYLE = """
body { font-family: sans-serif; margin: 16px; background: #fff; color: #111; }
.warning { background: #fff3cd; border: 1px solid #e0b000; padding: 8px; margin-bottom: 12px; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 240px; }
figure img { display: block; width: 240px; height: 180px; object-fit: cover; }
figcaption { font-size: 12px; overflow-wrap: anywhere; }
"""


def hit_line(hit: Hit) -> str:
    """Return one printed result line: rank, score, timestamp (frames) and name."""
    when = hit.row.get("timestamp_s")
    stamp = clock(float(str(when))) if when is not None else "-"
    return f"{hit.rank:>3}  {hit.score:+.4f}  {stamp:>12}  {hit.row['name']}"


def render(query: str, hits: list[Hit], directory: Path, manifest: dict[str, object], random_weights: bool) -> str:
    """Return the page for `hits` of `query`; thumbnails are read from the index folder `directory`."""
    cards = "\n".join(_card(hit, directory) for hit in hits)
    warning = (
        '<p class="warning">The service runs with random weights (CLIP_PRETRAINED=none): '
        "these rankings are meaningless.</p>"
        if random_weights
        else ""
    )
    model = f"{manifest.get('model')} ({manifest.get('pretrained')})"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(query)} — visual search</title>
<style>{_STYLE}</style></head>
<body>
<h1>“{escape(query)}”</h1>
<p>Top {len(hits)} of {escape(str(manifest.get("source")))}, model {escape(model)}; score = cosine similarity.</p>
{warning}
<div class="grid">
{cards}
</div>
</body></html>
"""


def _card(hit: Hit, directory: Path) -> str:
    thumb = hit.row.get("thumb")
    if thumb is not None:
        data = base64.b64encode((directory / str(thumb)).read_bytes()).decode()
        image = f'<img src="data:image/jpeg;base64,{data}" alt="{escape(str(hit.row["name"]))}">'
    else:
        image = "<p>(no thumbnail)</p>"
    when = hit.row.get("timestamp_s")
    stamp = f" · {clock(float(str(when)))}" if when is not None else ""
    caption = f"#{hit.rank} · {hit.score:.4f}{stamp}<br>{escape(str(hit.row['name']))}"
    return f'<figure data-rank="{hit.rank}" data-score="{hit.score:.6f}">{image}<figcaption>{caption}</figcaption></figure>'
