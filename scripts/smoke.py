"""End-to-end smoke check: `make smoke`.

Starts a local image server and `python -m app` with ViT-B-32 (random weights), then checks /health,
one signed image (512 floats, norm ≈ 1), a batch of 3 with a bad URL in the middle, and one text.
Exits non-zero on the first failure.
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from clip_client.signing import batch_payload_id, image_payload_id, signed_headers, text_payload_id
from PIL import Image

SECRET = secrets.token_hex(32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _image_server(folder: str) -> ThreadingHTTPServer:
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        img = Image.new("RGB", (640, 480), colour)
        img.paste((20, 20, 220), (100 * i, 100, 100 * i + 200, 300))
        img.save(os.path.join(folder, f"img{i}.jpg"), quality=90)
    handler = functools.partial(_QuietHandler, directory=folder)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _post(base: str, path: str, body: dict, payload_id: str) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} | signed_headers(SECRET, "POST", path, payload_id)
    req = urllib.request.Request(base + path, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _check(name: str, ok: bool, detail: object = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name} {detail}")
    if not ok:
        raise SystemExit(1)


def _unit_vector(vector: list[float], dim: int = 512) -> bool:
    return len(vector) == dim and abs(math.sqrt(sum(v * v for v in vector)) - 1.0) < 1e-3


def main() -> int:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "EMBEDDING_HMAC_SECRET": SECRET,
        "CLIP_MODEL": "ViT-B-32",
        "CLIP_PRETRAINED": "none",
        "ALLOW_PRIVATE_URLS": "1",
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    with tempfile.TemporaryDirectory() as folder:
        images = _image_server(folder)
        img = f"http://127.0.0.1:{images.server_address[1]}"
        server = subprocess.Popen([sys.executable, "-m", "app"], env=env)
        try:
            deadline = time.monotonic() + 180
            health: dict = {}
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    with urllib.request.urlopen(base + "/health", timeout=5) as resp:
                        health = json.loads(resp.read())
                        break
                except (urllib.error.URLError, OSError):
                    time.sleep(0.5)
            _check("GET /health is ok", health.get("status") == "ok", health)

            url = f"{img}/img0.jpg"
            status, body = _post(base, "/v1/embed/image", {"image_url": url}, image_payload_id(url))
            _check(
                "POST /v1/embed/image → 512 floats of norm 1", status == 200 and _unit_vector(body["embedding"]), status
            )

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
            _check(
                "POST /v1/embed/text → 512 floats of norm 1", status == 200 and _unit_vector(body["embedding"]), status
            )
        finally:
            server.terminate()
            server.wait(30)
            images.shutdown()
    print("smoke: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
