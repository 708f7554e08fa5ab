"""examples/visual_search end to end: a video written here, indexed through the real service (tiny model),
resumed, reloaded and searched; the ranking checked against brute force, the page rendered by Chromium.

Chromium is Debian's `chromium` package: `.ci/run` installs it when missing (apt-get); without it only
the page test is skipped, and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from scripts.procs import PYTHONPATH, ROOT
from tests.support.api import SECRET, call
from tests.support.metrics import delta, scrape
from tests.support.service import RunningService

# Six seconds of video, one solid colour per second: six frames at --every 1, each unmistakable on a screenshot.
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 30), (220, 30, 220), (30, 210, 210)]
QUERY = "a red car"
TOP_K = 4
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def write_video(path: Path, fps: int = 8, size: tuple[int, int] = (96, 72)) -> None:
    """Write an MPEG-4 video of one second per colour of COLOURS."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for colour in COLOURS:
            pixels = np.full((size[1], size[0], 3), colour, dtype=np.uint8)
            for _ in range(fps):
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def example(base: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m examples.visual_search ARGS` against the service at `base`, as a user would."""
    env = {
        **os.environ,
        "PYTHONPATH": PYTHONPATH,
        "CLIP_INFERENCE_BACKEND": "runpod_pod",
        "CLIP_POD_BASE_URL": base,
        "EMBEDDING_HMAC_SECRET": SECRET,
    }
    command = [sys.executable, "-m", "examples.visual_search", *args]
    return subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@dataclass
class Indexed:
    folder: Path
    runs: list[subprocess.CompletedProcess[str]]
    embedded: float  # images the service embedded over both runs
    search: subprocess.CompletedProcess[str]
    page: Path


@pytest.fixture(scope="module")
def indexed(service: RunningService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Indexed]:
    work = tmp_path_factory.mktemp("visual_search")
    video = work / "colours.mp4"
    write_video(video)
    folder = work / "index"
    before = scrape(service.base)
    # An interrupted first run (--limit), then the run that finishes the job.
    first = example(
        service.base, "index", str(video), "--index", str(folder), "--every", "1", "--chunk", "2", "--limit", "4"
    )
    second = example(service.base, "index", str(video), "--index", str(folder), "--every", "1", "--chunk", "2")
    embedded = delta(before, scrape(service.base), "clip_embeddings_total", kind="image")
    page = work / "results.html"
    search = example(
        service.base, "search", QUERY, "--index", str(folder), "-k", str(TOP_K), "--json", "--html", str(page)
    )
    yield Indexed(folder, [first, second], embedded, search, page)


def frame_paths(folder: Path) -> list[Path]:
    return sorted((folder / "frames").glob("*.jpg"))


def test_visual_search_index_resumes_without_embedding_twice(indexed):
    first, second = indexed.runs
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert "4 added, 0 already indexed, 0 failed; 4 in" in first.stdout
    assert "2 added, 4 already indexed, 0 failed; 6 in" in second.stdout
    assert indexed.embedded == len(COLOURS)
    assert [p.name for p in frame_paths(indexed.folder)] == [f"colours_{s * 1000:010d}ms.jpg" for s in range(6)]
    rows = [json.loads(line) for line in (indexed.folder / "items.jsonl").read_text().splitlines()]
    assert [(r["key"], r["uid"], r["timestamp_s"]) for r in rows] == [(s, f"colours.mp4@{s}.000", s) for s in range(6)]
    assert "embedding: 100%" in second.stderr  # the progress bar, resumed at 4 of 6


def test_visual_search_search_equals_brute_force_cosine(indexed, service, image_server):
    assert indexed.search.returncode == 0, indexed.search.stderr
    assert "random weights (CLIP_PRETRAINED=none): rankings are meaningless" in indexed.search.stderr
    hits = json.loads(indexed.search.stdout)
    # The reference: every frame and the query embedded again here, without the example or its client.
    for path in frame_paths(indexed.folder):
        image_server.files[f"vs-{path.name}"] = path.read_bytes()
    frames = []
    for path in frame_paths(indexed.folder):
        status, body, _ = call(service.base, "/v1/embed/image", {"image_url": image_server.url(f"img/vs-{path.name}")})
        assert status == 200, body
        frames.append(body["embedding"])
    status, body, _ = call(service.base, "/v1/embed/text", {"text": QUERY})
    assert status == 200, body
    matrix = np.array(frames, dtype=np.float64)
    query = np.array(body["embedding"], dtype=np.float64)
    cosine = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    expected = np.argsort(-cosine, kind="stable")[:TOP_K]
    assert [hit["key"] for hit in hits] == expected.tolist()
    assert [hit["rank"] for hit in hits] == list(range(1, TOP_K + 1))
    assert [hit["timestamp_s"] for hit in hits] == [float(key) for key in expected]
    np.testing.assert_allclose([hit["score"] for hit in hits], cosine[expected], rtol=0, atol=1e-5)


def colour_columns(shot: Image.Image, colour: tuple[int, int, int], tolerance: int = 40) -> np.ndarray:
    """Return the x coordinates of the screenshot's pixels within `tolerance` of `colour` on every channel."""
    pixels = np.asarray(shot.convert("RGB"), dtype=np.int16)
    near = np.all(np.abs(pixels - np.array(colour, dtype=np.int16)) <= tolerance, axis=2)
    return np.nonzero(near)[1]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: `apt-get install -y chromium` (.ci/run does)")
def test_visual_search_page_shows_the_top_k_thumbnails_in_chromium(indexed, tmp_path):
    hits = json.loads(indexed.search.stdout)
    html = indexed.page.read_text()
    assert 'src="http' not in html and html.count('src="data:image/jpeg;base64,') == TOP_K
    shot_path = tmp_path / "shot.png"
    command = [
        str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot_path}", "--window-size=1100,500", indexed.page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert shot_path.exists(), done.stderr[-2000:]
    shot = Image.open(shot_path)
    # Each frame's colour as decoded (the codec shifts it a little), read from the frames the example saved.
    frame_colour = {
        key: tuple(int(c) for c in np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).mean(axis=0))
        for key, path in enumerate(frame_paths(indexed.folder))
    }
    shown = [hit["key"] for hit in hits]
    columns = {key: colour_columns(shot, colour) for key, colour in frame_colour.items()}
    # A thumbnail is drawn 240x180: most of its pixels are there; a frame not in the top k is nowhere.
    assert {key for key, xs in columns.items() if xs.size > 20_000} == set(shown)
    assert all(columns[key].size < 200 for key in frame_colour if key not in shown)
    # Best first: left to right in rank order.
    centres = [float(columns[key].mean()) for key in shown]
    assert centres == sorted(centres)


def test_visual_search_index_reports_a_failed_url_and_retries_it(service, image_server, tmp_path):
    listing = tmp_path / "urls.txt"
    good, missing = image_server.url("img/photo1.jpg"), image_server.url("img/vs-missing.jpg")
    listing.write_text(f"# two images\n{good}\n\n{missing}\n")
    folder = tmp_path / "index"
    runs = [example(service.base, "index", str(listing), "--index", str(folder)) for _ in range(2)]
    assert [run.returncode for run in runs] == [1, 1]
    assert "1 added, 0 already indexed, 1 failed; 1 in" in runs[0].stdout
    assert "0 added, 1 already indexed, 1 failed; 1 in" in runs[1].stdout
    assert f"failed: {missing}: download_failed:" in runs[1].stderr
    rows = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]
    assert [(row["uid"], row["thumb"]) for row in rows] == [(good, "thumbs/0000000.jpg")]
    with Image.open(folder / "thumbs" / "0000000.jpg") as thumb:
        assert thumb.size == (176, 128)  # photo1.jpg as it is: thumbnails only shrink, to fit 240x180
