"""`/v1/embed/image-upload`: multipart image parts, answered like the batch; curl -F as documented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from clip_client.signing import UPLOAD_PATH, signed_headers, upload_payload_id

from scripts.procs import ROOT
from tests.support.api import SECRET, call, multipart, upload
from tests.support.data import jpeg_bytes, png_rgba_bytes, tiny_settings
from tests.support.service import RunningService, run_service

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def uncached() -> Iterator[RunningService]:
    """No embedding cache, so that equal vectors are computed twice, not looked up."""
    with run_service(tiny_settings(cache_max_entries=0, max_image_size_bytes=LIMIT)) as running:
        yield running


def test_upload_equals_the_url_path_per_part_in_order(uncached, image_server):
    names = ["photo1.jpg", "rgba.png", "photo2.jpg"]
    parts = [("image", name, image_server.files[name]) for name in names]
    status, body, _ = upload(uncached.base, parts)
    assert status == 200
    assert ([r["index"] for r in body["results"]], body["succeeded"], body["failed"]) == ([0, 1, 2], 3, 0)
    urls = [image_server.url(f"img/{name}") for name in names]
    _, by_url, _ = call(uncached.base, "/v1/embed/image-batch", {"image_urls": urls})
    for got, want in zip(body["results"], by_url["results"], strict=True):
        np.testing.assert_allclose(got["embedding"], want["embedding"], atol=1e-6)


def test_upload_bad_parts_fail_alone(uncached):
    parts = [
        ("image", "a.jpg", jpeg_bytes(100, 80, 1)),
        ("image", "page.html", b"<html>not an image</html>"),
        ("image", "huge.jpg", jpeg_bytes(1500, 1000, 2, quality=100)),
        ("image", "empty.jpg", b""),
        ("other-name", "b.png", png_rgba_bytes()),
    ]
    status, body, _ = upload(uncached.base, parts)
    assert status == 200
    codes = [r["error"]["code"] if r["error"] else None for r in body["results"]]
    assert codes == [None, "invalid_image", "image_too_large", "invalid_image", None]
    size = len(parts[2][2])
    assert body["results"][2]["error"]["message"] == f"image is {size} bytes, over {LIMIT}"


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([], "the upload holds no image part: send each image as a file part, e.g. curl -F image=@cat.jpg"),
        (
            [("image", "a.jpg", b"x"), ("caption", None, b"a cat")],
            "part 'caption' is a form field, not a file: send each image as a file part, e.g. curl -F image=@cat.jpg",
        ),
        (
            [("image", f"{i}.jpg", b"x") for i in range(17)],
            "multipart body refused: Too many files. Maximum number of files is 16.",
        ),
    ],
)
def test_upload_wrong_parts_are_422(service, parts, message):
    status, body, _ = upload(service.base, parts)
    assert (status, body) == (422, {"error": {"code": "invalid_request", "message": message}})


@pytest.mark.parametrize(
    ("content_type", "raw", "message"),
    [
        ("application/json", b'{"image": "x"}', "Content-Type must be multipart/form-data"),
        ("multipart/form-data", b"--x\r\n", "multipart body refused: Missing boundary in multipart."),
        ("multipart/form-data; boundary=x", b"garbage without boundaries", "multipart body refused: Invalid"),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--\r\n",
            "multipart body refused:",
        ),
    ],
)
def test_upload_malformed_body_is_422_never_500(service, content_type, raw, message):
    headers = {"Content-Type": content_type} | signed_headers(SECRET, "POST", UPLOAD_PATH, upload_payload_id([]))
    status, body, _ = call(service.base, UPLOAD_PATH, raw=raw, secret=None, headers=headers)
    assert (status, body["error"]["code"]) == (422, "invalid_request")
    assert body["error"]["message"].startswith(message)


def test_upload_signed_over_other_bytes_is_401(service):
    raw, content_type = multipart([("image", "a.jpg", b"the bytes sent")])
    headers = {"Content-Type": content_type} | signed_headers(
        SECRET, "POST", UPLOAD_PATH, upload_payload_id([b"other bytes"])
    )
    status, body, _ = call(service.base, UPLOAD_PATH, raw=raw, secret=None, headers=headers)
    assert (status, body["error"]["code"]) == (401, "signature_mismatch")


def test_upload_with_curl_as_the_readme_shows(service, tmp_path):
    cat, dog = tmp_path / "cat.jpg", tmp_path / "dog.png"
    cat.write_bytes(jpeg_bytes(120, 90, 5))
    dog.write_bytes(png_rgba_bytes())
    env = {**os.environ, "EMBEDDING_HMAC_SECRET": SECRET}
    sign = [sys.executable, "-m", "app.auth.sign", "POST", UPLOAD_PATH, "--files", str(cat), str(dog), "--nonce"]
    headers = subprocess.run(sign, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.split()
    curl = [
        "curl",
        "-s",
        "-X",
        "POST",
        service.base + UPLOAD_PATH,
        *headers,
        "-F",
        f"image=@{cat}",
        "-F",
        f"image=@{dog}",
    ]
    answer = json.loads(subprocess.run(curl, capture_output=True, check=True, timeout=60).stdout)
    assert (answer["succeeded"], answer["failed"], answer["dim"]) == (2, 0, 64)
