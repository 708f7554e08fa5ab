"""What can be indexed: a folder of images, a file of image URLs, or the frames of a video sampled with PyAV."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v"})


@dataclass(frozen=True, slots=True)
class Item:
    """One thing to embed; `uid` is stable across runs, which is what resuming compares."""

    uid: str
    name: str
    url: str | None = None  # set for URL lists; local files get theirs from the frame server
    path: Path | None = None  # the local file, served to the service and thumbnailed
    timestamp_s: float | None = None  # video frames only


def kind_of(source: str) -> str:
    """Return "urls", "folder" or "video" for a source argument, or raise ValueError saying what is accepted."""
    path = Path(source)
    if path.is_dir():
        return "folder"
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    if path.is_file():
        return "urls"
    raise ValueError(
        f"{source}: not a folder of images, a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or a file of URLs"
    )


def folder_items(folder: Path) -> list[Item]:
    """Return the images under `folder` (recursively), sorted by path."""
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [Item(uid=p.relative_to(folder).as_posix(), name=p.relative_to(folder).as_posix(), path=p) for p in paths]


def url_items(listing: Path) -> list[Item]:
    """Return one item per http(s) URL of a text file (one per line; blank lines and # comments skipped)."""
    items: list[Item] = []
    seen: set[str] = set()
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        url = line.strip()
        if not url or url.startswith("#"):
            continue
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{listing}:{number}: {url!r} is not an http(s) URL")
        if url not in seen:
            seen.add(url)
            items.append(Item(uid=url, name=url, url=url))
    return items


def video_frames(video: Path, out_dir: Path, every_s: float) -> Iterator[Item]:
    """Decode `video` and yield one frame per `every_s` seconds, saved as JPEG in `out_dir` with its timestamp.

    A frame already saved by an earlier run is not written again, so resuming costs one decode only.
    """
    import av  # imported here: indexing a folder or URLs needs no FFmpeg

    out_dir.mkdir(parents=True, exist_ok=True)
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_s = 0.0
        for frame in container.decode(stream):
            if frame.time is None or frame.time + 1e-6 < next_s:
                continue
            t = float(frame.time)
            next_s = (math.floor(t / every_s + 1e-6) + 1) * every_s
            path = out_dir / f"{video.stem}_{round(t * 1000):010d}ms.jpg"
            if not path.exists():
                tmp = path.with_suffix(".part")
                frame.to_image().save(tmp, "JPEG", quality=90)
                os.replace(tmp, path)
            yield Item(uid=f"{video.name}@{t:.3f}", name=f"{video.name} @ {clock(t)}", path=path, timestamp_s=t)


def clock(seconds: float) -> str:
    """Return `seconds` as H:MM:SS.mmm."""
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"
