"""End-to-end smoke check: `make smoke`.

Starts a local image server and `python -m app` with ViT-B-32 (random weights), then checks /health,
one signed image (512 floats, norm ≈ 1), a batch of 3 with a bad URL in the middle, one text, a text
batch, the same image inline (data URI) and uploaded, and /v1/embeddings with an API key.
Exits non-zero on the first failure. The server's log goes to a file, named when a check fails (and
removed when all pass), so that the PASS lines stay readable.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
import secrets
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from clip_client.signing import (
    batch_payload_id,
    image_payload_id,
    signed_headers,
    text_batch_payload_id,
    text_payload_id,
    upload_payload_id,
)
from PIL import Image

from scripts.procs import NotUp, app_server

SECRET = secrets.token_hex(32)
API_KEY = secrets.token_hex(32)
BOUNDARY = "smoke-boundary"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _image_server() -> Iterator[str]:
    """Serve two generated JPEGs (img0.jpg, img1.jpg) on 127.0.0.1; yield the base URL."""
    with tempfile.TemporaryDirectory() as folder:
        for i, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
            img = Image.new("RGB", (640, 480), colour)
            img.paste((20, 20, 220), (100 * i, 100, 100 * i + 200, 300))
            img.save(os.path.join(folder, f"img{i}.jpg"), quality=90)
        handler = functools.partial(_QuietHandler, directory=folder)
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()


def _post(base: str, path: str, body: dict, payload_id: str) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} | signed_headers(SECRET, "POST", path, payload_id)
    return _send(base + path, json.dumps(body).encode(), headers)


def _upload(base: str, images: list[bytes]) -> tuple[int, dict]:
    path = "/v1/embed/image-upload"
    body = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{i}.jpg"\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for i, data in enumerate(images)
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    headers |= signed_headers(SECRET, "POST", path, upload_payload_id(images))
    return _send(base + path, body + f"--{BOUNDARY}--\r\n".encode(), headers)


def _send(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    req = urllib.request.Request(url, data, headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


class _Failed(Exception):
    """A check failed (its FAIL line is printed)."""


def _check(name: str, ok: bool, detail: object = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name} {detail}", flush=True)
    if not ok:
        raise _Failed(name)


def _unit_vector(vector: list[float], dim: int = 512) -> bool:
    return len(vector) == dim and abs(math.sqrt(sum(v * v for v in vector)) - 1.0) < 1e-3


def _checks(base: str, img: str) -> None:
    with urllib.request.urlopen(base + "/health", timeout=5) as resp:
        health = json.loads(resp.read())
    _check("GET /health is ok", health.get("status") == "ok", health)

    url = f"{img}/img0.jpg"
    status, body = _post(base, "/v1/embed/image", {"image_url": url}, image_payload_id(url))
    _check("POST /v1/embed/image → 512 floats of norm 1", status == 200 and _unit_vector(body["embedding"]), status)

    urls = [f"{img}/img0.jpg", f"{img}/missing.jpg", f"{img}/img1.jpg"]
    status, body = _post(base, "/v1/embed/image-batch", {"image_urls": urls}, batch_payload_id(urls))
    codes = [r["error"]["code"] if r["error"] else None for r in body.get("results", [])]
    _check(
        "POST /v1/embed/image-batch → error at index 1 only",
        status == 200 and codes == [None, "download_failed", None],
        codes,
    )
    _check("batch vectors are unit 512-d", all(_unit_vector(body["results"][i]["embedding"]) for i in (0, 2)))

    text = "a photo of a cat"
    status, body = _post(base, "/v1/embed/text", {"text": text}, text_payload_id(text))
    _check("POST /v1/embed/text → 512 floats of norm 1", status == 200 and _unit_vector(body["embedding"]), status)
    text_vector = body["embedding"]
    _new_endpoint_checks(base, img, text, text_vector)


def _close(a: list[float], b: list[float]) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5


def _new_endpoint_checks(base: str, img: str, text: str, text_vector: list[float]) -> None:
    texts = [text, " "]
    status, body = _post(base, "/v1/embed/text-batch", {"texts": texts}, text_batch_payload_id(texts))
    codes = [r["error"]["code"] if r["error"] else None for r in body.get("results", [])]
    ok = status == 200 and codes == [None, "invalid_request"] and _close(body["results"][0]["embedding"], text_vector)
    _check("POST /v1/embed/text-batch → the text's vector, then a blank-text error", ok, codes)

    with urllib.request.urlopen(f"{img}/img1.jpg", timeout=5) as resp:
        photo = resp.read()
    url = f"{img}/img1.jpg"
    _, by_url = _post(base, "/v1/embed/image", {"image_url": url}, image_payload_id(url))
    inline = "data:image/jpeg;base64," + base64.b64encode(photo).decode()
    status, body = _post(base, "/v1/embed/image", {"image_url": inline}, image_payload_id(inline))
    ok = status == 200 and _close(body["embedding"], by_url["embedding"])
    _check("POST /v1/embed/image with a data URI → the URL's vector", ok, status)
    status, body = _upload(base, [photo])
    ok = status == 200 and body["succeeded"] == 1 and _close(body["results"][0]["embedding"], by_url["embedding"])
    _check("POST /v1/embed/image-upload → the URL's vector", ok, status)

    request = {"model": "ViT-B-32", "input": [text], "encoding_format": "float"}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    status, body = _send(base + "/v1/embeddings", json.dumps(request).encode(), headers)
    ok = status == 200 and _close(body["data"][0]["embedding"], text_vector) and body["usage"]["prompt_tokens"] == 7
    _check("POST /v1/embeddings with an API key → the text's vector and its 7 tokens", ok, status)


def main() -> int:
    env = {
        "EMBEDDING_HMAC_SECRET": SECRET,
        "API_KEYS": API_KEY,
        "CLIP_MODEL": "ViT-B-32",
        "CLIP_PRETRAINED": "none",
        "ALLOW_PRIVATE_URLS": "1",
    }
    fd, name = tempfile.mkstemp(prefix="smoke-server-", suffix=".log")
    os.close(fd)
    log = Path(name)
    passed = False
    try:
        with _image_server() as img, app_server(env, log=log, timeout_s=180) as (_, base):
            _checks(base, img)
        passed = True
    except NotUp as exc:
        print(f"FAIL  {exc}")
    except _Failed:
        pass
    finally:
        if not passed:
            print(f"smoke: the server's log is {log}")
    if not passed:
        return 1
    log.unlink()
    print("smoke: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
