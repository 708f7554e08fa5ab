"""Embed items through the service in chunks, saving the index after each chunk so that a rerun resumes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from clip_client import ClipClient
from tqdm import tqdm

from examples.visual_search.fileserver import url_for
from examples.visual_search.sources import Item
from examples.visual_search.store import VectorStore
from examples.visual_search.thumbs import make_thumbnails

THUMBS_DIR = "thumbs"


@dataclass(slots=True)
class Outcome:
    """What one `index` run did."""

    skipped: int = 0
    added: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (name, code, message)


async def index_items(
    items: Sequence[Item],
    store: VectorStore,
    clip: ClipClient,
    *,
    base_url: str | None,
    root: Path | None,
    chunk_size: int = 64,
    limit: int | None = None,
) -> Outcome:
    """Embed the items not in `store` yet (at most `limit` of them) and save them chunk by chunk.

    Local items (`path`) are fetched by the service from `base_url`, which serves `root`. Items the
    service refuses are reported and left out, so that the next run tries them again.
    """
    done = store.done_uids()
    todo = [item for item in items if item.uid not in done]
    outcome = Outcome(skipped=len(items) - len(todo))
    if limit is not None:
        todo = todo[:limit]
    thumbs = store.directory / THUMBS_DIR
    thumbs.mkdir(exist_ok=True)
    with tqdm(total=outcome.skipped + len(todo), initial=outcome.skipped, unit="img", desc="embedding") as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            urls = [_url(item, base_url, root) for item in chunk]
            results = await clip.embed_images(urls)
            kept: list[tuple[Item, list[float]]] = []
            for item, result in zip(chunk, results, strict=True):
                if result.embedding is not None:
                    kept.append((item, result.embedding))
                elif result.error is not None:
                    outcome.failures.append((item.name, result.error.code, result.error.message))
            if kept:
                pairs = [(item, thumbs / f"{store.index.ntotal + i:07d}.jpg") for i, (item, _) in enumerate(kept)]
                made = await make_thumbnails(pairs)
                rows = [_row(item, target, ok, store.directory) for (item, target), ok in zip(pairs, made, strict=True)]
                store.add(np.array([vector for _, vector in kept], dtype=np.float32), rows)
                store.save()
                outcome.added += len(kept)
            bar.update(len(chunk))
    return outcome


def _url(item: Item, base_url: str | None, root: Path | None) -> str:
    if item.url is not None:
        return item.url
    assert item.path is not None and base_url is not None and root is not None
    return url_for(base_url, root, item.path)


def _row(item: Item, thumb: Path, made: bool, directory: Path) -> dict[str, object]:
    return {
        "uid": item.uid,
        "name": item.name,
        "url": item.url,
        "path": str(item.path) if item.path is not None else None,
        "timestamp_s": item.timestamp_s,
        "thumb": thumb.relative_to(directory).as_posix() if made else None,
    }
