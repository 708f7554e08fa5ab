"""`python -m clip_client embed-list` against the real service: rows, failures, resume, interruption, progress bar."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from clip_client import ClipPodClient
from clip_client.__main__ import main

from tests.support.api import SECRET
from tests.support.data import jpeg_bytes, tiny_settings
from tests.support.imageserver import ImageServer
from tests.support.service import RunningService, run_service

ROOT = Path(__file__).resolve().parents[2]
LINES = 200


@dataclass(frozen=True)
class Line:
    text: str
    image: bytes | None = None  # the bytes whose vector the row must hold; None when the line fails or is skipped
    code: str | None = None  # the failure's code; None when the line succeeds or is skipped
    path: str | None = None  # the image server path this line makes the service fetch


def _line(i: int, images: ImageServer, folder: Path) -> Line:
    """Line i+1 of the list: mostly URLs, some local files, some of each bad, a comment and a blank."""
    photo = images.files[f"photo{i % 6}.jpg"]
    if i == 0:
        return Line("# frames of the first reel")
    if i == 100:
        return Line("")
    if i % 20 == 5:
        return Line(images.url(f"img/missing{i}.jpg"), code="download_failed", path=f"/img/missing{i}.jpg")
    if i % 20 == 11:
        images.files[f"page{i}.html"] = images.files["page.html"]
        return Line(images.url(f"img/page{i}.html"), code="invalid_image", path=f"/img/page{i}.html")
    if i % 50 == 13:
        return Line(str(folder / f"missing{i}.jpg"), code="read_failed")
    if i % 40 == 3:
        (folder / f"notes{i}.jpg").write_text("not an image")
        return Line(str(folder / f"notes{i}.jpg"), code="invalid_image")
    if i % 25 == 7:
        data = jpeg_bytes(64 + i, 48, 100 + i)
        (folder / f"local{i}.jpg").write_bytes(data)
        return Line(str(folder / f"local{i}.jpg"), image=data)
    images.files[f"p{i}.jpg"] = photo
    return Line(images.url(f"img/p{i}.jpg"), image=photo, path=f"/img/p{i}.jpg")


def make_list(images: ImageServer, folder: Path, count: int = LINES) -> tuple[Path, list[Line]]:
    lines = [_line(i, images, folder) for i in range(count)]
    path = folder / "list.txt"
    path.write_text("".join(line.text + "\n" for line in lines))
    return path, lines


async def _reference_vectors(base: str, images: ImageServer, lines: list[Line]) -> dict[bytes, np.ndarray]:
    """Embed each distinct image alone, by URL: what the rows must equal."""
    distinct = {line.image for line in lines if line.image is not None}
    for n, data in enumerate(distinct):
        images.files[f"ref{n}.jpg"] = data
    async with ClipPodClient(base, SECRET) as client:
        vectors = [await client.embed_image(images.url(f"img/ref{n}.jpg")) for n in range(len(distinct))]
    return {data: np.array(vector, dtype=np.float32) for data, vector in zip(distinct, vectors, strict=True)}


def assert_rows(out: Path, lines: list[Line], reference: dict[bytes, np.ndarray], done: list[int]) -> None:
    """Rows in `done` hold their image's vector; every other row is zero."""
    vectors = np.load(out / "embeddings.npy")
    assert vectors.dtype == np.float32 and vectors.shape == (len(lines), 64)
    for row, line in enumerate(lines):
        if row in done:
            assert line.image is not None
            np.testing.assert_allclose(vectors[row], reference[line.image], atol=1e-5, err_msg=f"row {row}")
        else:
            assert not vectors[row].any(), f"row {row} should be zero"


def failures(out: Path) -> list[tuple[int, str, str]]:
    records = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert all(record["message"] for record in records)
    return [(record["line"], record["input"], record["code"]) for record in records]


def expected_failures(lines: list[Line]) -> list[tuple[int, str, str]]:
    return [(row + 1, line.text, line.code) for row, line in enumerate(lines) if line.code]


def ok_rows(lines: list[Line]) -> list[int]:
    return [row for row, line in enumerate(lines) if line.image is not None]


def progress(out: Path) -> np.ndarray:
    return np.load(out / "progress.npy")


@pytest.fixture
def bulk(service, monkeypatch, capsys):
    """Run `embed-list` in-process against the real service; return (exit status, summary, stderr)."""
    monkeypatch.delenv("CLIP_INFERENCE_BACKEND", raising=False)
    monkeypatch.setenv("CLIP_POD_BASE_URL", service.base)
    monkeypatch.setenv("EMBEDDING_HMAC_SECRET", SECRET)

    def run(*argv: str) -> tuple[int, dict, str]:
        status = main(["embed-list", *argv])
        captured = capsys.readouterr()
        return status, json.loads(captured.out), captured.err

    return run


def test_bulk_embeds_200_lines_into_rows_and_failures(bulk, service, image_server, tmp_path):
    list_path, lines = make_list(image_server, tmp_path)
    reference = asyncio.run(_reference_vectors(service.base, image_server, lines))
    out = tmp_path / "out"
    status, summary, stderr = bulk(str(list_path), "--out", str(out), "--concurrency", "3")
    succeeded, failed = len(ok_rows(lines)), len(expected_failures(lines))
    assert status == 1 and stderr == ""  # some lines failed; no progress bar when stderr is not a terminal
    assert summary == {
        "lines": LINES,
        "succeeded": succeeded,
        "failed": failed,
        "skipped": 2,
        "pending": 0,
        "dim": 64,
        "embeddings": str(out / "embeddings.npy"),
        "failures": str(out / "failures.jsonl"),
        "interrupted": False,
    }
    assert succeeded + failed + 2 == LINES and failed >= 20
    assert {code for *_, code in expected_failures(lines)} == {"download_failed", "invalid_image", "read_failed"}
    assert failures(out) == expected_failures(lines)
    assert_rows(out, lines, reference, ok_rows(lines))


def test_bulk_rerun_after_a_limited_run_requests_only_the_rest(bulk, service, image_server, tmp_path):
    list_path, lines = make_list(image_server, tmp_path)
    reference = asyncio.run(_reference_vectors(service.base, image_server, lines))
    out = tmp_path / "out"
    before = len(image_server.requests)
    status, first, _ = bulk(str(list_path), "--out", str(out), "--limit", "70")
    assert status == 1 and first["pending"] == LINES - 2 - 70 and not first["interrupted"]
    done_first = {row for row, state in enumerate(progress(out)) if state == 1}
    assert done_first and max(done_first) < 75  # the first 70 lines to embed, in order
    status, second, _ = bulk(str(list_path), "--out", str(out))
    assert status == 1 and second["pending"] == 0 and second["succeeded"] == len(ok_rows(lines))
    # Every line's image was fetched once over both runs: nothing done in the first was asked again.
    fetched = [path for path in image_server.requests[before:] if not path.startswith("/img/ref")]
    assert sorted(fetched) == sorted(line.path for line in lines if line.path)
    assert failures(out) == expected_failures(lines)
    assert_rows(out, lines, reference, ok_rows(lines))


def test_bulk_rerun_of_a_finished_list_sends_nothing(bulk, image_server, tmp_path):
    list_path, lines = make_list(image_server, tmp_path, count=30)
    out = tmp_path / "out"
    bulk(str(list_path), "--out", str(out))
    before = len(image_server.requests)
    status, summary, _ = bulk(str(list_path), "--out", str(out))
    assert image_server.requests[before:] == []
    assert status == 1 and summary["pending"] == 0 and summary["failed"] == len(expected_failures(lines))


def test_bulk_retry_failed_asks_again_for_the_failed_lines_only(bulk, image_server, tmp_path):
    list_path, lines = make_list(image_server, tmp_path, count=30)
    out = tmp_path / "out"
    bulk(str(list_path), "--out", str(out))
    before = len(image_server.requests)
    status, summary, _ = bulk(str(list_path), "--out", str(out), "--retry-failed")
    assert summary["failed"] == len(expected_failures(lines)) and summary["pending"] == 0
    assert sorted(image_server.requests[before:]) == sorted(
        line.path for line in lines if line.path and line.code is not None
    )
    assert status == 1 and failures(out) == expected_failures(lines)


def test_bulk_refuses_an_output_folder_of_another_list(bulk, image_server, tmp_path):
    list_path, _ = make_list(image_server, tmp_path, count=10)
    out = tmp_path / "out"
    bulk(str(list_path), "--out", str(out))
    list_path.write_text(list_path.read_text() + image_server.url("img/photo1.jpg") + "\n")
    status, summary, _ = bulk(str(list_path), "--out", str(out))
    assert status == 2 and summary["error"]["code"] == "config_error"
    assert "holds the output of another list" in summary["error"]["message"]


def test_bulk_missing_list_exits_2(bulk, tmp_path):
    status, summary, _ = bulk(str(tmp_path / "nope.txt"), "--out", str(tmp_path / "out"))
    assert status == 2 and summary["error"]["message"].startswith(f"cannot read the list {tmp_path / 'nope.txt'}")


def test_bulk_wrong_secret_stops_the_run_with_signature_mismatch(bulk, monkeypatch, image_server, tmp_path):
    list_path, _ = make_list(image_server, tmp_path, count=10)
    monkeypatch.setenv("EMBEDDING_HMAC_SECRET", "wrong")
    status, summary, _ = bulk(str(list_path), "--out", str(tmp_path / "out"))
    assert status == 1 and summary["error"]["code"] == "signature_mismatch"
    # Nothing embedded; the one line failed is the text file, refused here before any request.
    assert progress(tmp_path / "out").tolist() == [3, 0, 0, 2, 0, 0, 0, 0, 0, 0]


# -- as a separate process: signals and the terminal ------------------------------------------------


@pytest.fixture(scope="module")
def gated() -> Iterator[tuple[RunningService, ImageServer]]:
    """A service that waits for slow downloads, and an image server of its own whose gate the test holds."""
    with ImageServer() as images, run_service(tiny_settings(image_download_timeout_s=60)) as running:
        for seed in range(6):
            images.files[f"photo{seed}.jpg"] = jpeg_bytes(160 + 16 * seed, 120 + 8 * seed, seed)
        images.files["page.html"] = b"<html></html>"
        try:
            yield running, images
        finally:
            images.gate.set()  # let the service finish any download still held


def _env(service: RunningService) -> dict[str, str]:
    return os.environ | {
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'client'}",
        "CLIP_POD_BASE_URL": service.base,
        "EMBEDDING_HMAC_SECRET": SECRET,
        "CLIP_INFERENCE_BACKEND": "runpod_pod",
    }


def _wait_until(condition, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert proc.poll() is None, f"the command exited before: {what}"
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_bulk_interrupted_run_saves_whole_files_and_resumes(gated, tmp_path, sig):
    service, images = gated
    images.gate.clear()
    list_path, lines = make_list(images, tmp_path, count=120)
    # Line 61's download hangs until the gate opens: the run is surely mid-way when the signal comes.
    lines[60] = Line(images.url("gated/photo2.jpg"), image=images.files["photo2.jpg"], path="/gated/photo2.jpg")
    list_path.write_text("".join(line.text + "\n" for line in lines))
    reference = asyncio.run(_reference_vectors(service.base, images, lines))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "clip_client", "embed-list", str(list_path), "--out", str(out)]
    before, gated_before = len(images.requests), images.count("/gated/")
    proc = subprocess.Popen([*command, "--concurrency", "1"], env=_env(service), cwd=ROOT, stdout=subprocess.PIPE)
    try:
        _wait_until(lambda: images.count("/gated/") > gated_before, "the gated download started", proc)
        proc.send_signal(sig)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    summary = json.loads(stdout)
    assert proc.returncode == 130 and summary["interrupted"] is True and summary["pending"] > 0
    state = progress(out)
    done_first = [row for row, s in enumerate(state) if s == 1]
    assert done_first and max(done_first) < 60 and state[60] == 0
    assert summary["succeeded"] == len(done_first)
    assert_rows(out, lines, reference, done_first)  # whole files: each loads, and each done row is right
    assert failures(out) == [f for f in expected_failures(lines) if state[f[0] - 1] == 2]
    json.loads((out / "state.json").read_text())

    images.gate.set()
    done = subprocess.run(command, env=_env(service), cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert done.returncode == 1 and json.loads(done.stdout)["pending"] == 0
    fetched = [p for p in images.requests[before:] if not p.startswith("/img/ref")]
    done_paths = {lines[row].path for row in done_first}
    assert all(fetched.count(path) == 1 for path in done_paths if path)  # never asked again
    assert failures(out) == expected_failures(lines)
    assert_rows(out, lines, reference, ok_rows(lines))


def test_bulk_shows_a_progress_bar_on_a_terminal(gated, tmp_path):
    service, images = gated
    images.gate.set()
    list_path, lines = make_list(images, tmp_path, count=12)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 columns wide
    try:
        done = subprocess.run(
            [sys.executable, "-m", "clip_client", "embed-list", str(list_path), "--out", str(tmp_path / "out")],
            env=_env(service),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=120,
            check=False,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and everything was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    text = shown.decode(errors="replace")
    assert done.returncode == 1
    final = text.rstrip().rsplit("\r", 1)[-1]  # the bar's last state: count, [elapsed<ETA, rate], the failures
    failed = len(expected_failures(lines))
    assert re.search(rf"11/11 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(image/s|s/image), failed={failed}\]", final), final


def test_bulk_unwritable_output_folder_exits_2(bulk, image_server, tmp_path):
    list_path, _ = make_list(image_server, tmp_path, count=3)
    (tmp_path / "file").write_text("not a folder")
    status, summary, _ = bulk(str(list_path), "--out", str(tmp_path / "file" / "out"))
    assert status == 2 and summary["error"]["message"].startswith(f"cannot write the output folder {tmp_path}")
