"""The soak's image host on 127.0.0.1: good photos, broken files, slow and oversized answers.

Routes: /img/NAME (a file), /slow/NAME?delay=S (the file after S seconds), /status/CODE.
"""

from __future__ import annotations

import asyncio
import io
import random
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web
from PIL import Image

# Served as-is: the service must refuse each with a 4xx (never a 5xx).
BROKEN_NAMES = ("random.jpg", "page.html.jpg", "truncated.jpg")
# Over MAX_IMAGE_SIZE_BYTES (bytes) or MAX_IMAGE_PIXELS (a small PNG of a huge canvas): 413.
OVERSIZED_NAMES = ("huge-bytes.jpg", "huge-pixels.png")


def photo(width: int, height: int, seed: int) -> bytes:
    """A JPEG with smooth colour and some noise, different for every seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.int16)
    img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=88)
    return buf.getvalue()


def _png_canvas(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 255).save(buf, "PNG", optimize=True)
    return buf.getvalue()


@dataclass
class ImageHost:
    """Holds the files; `base` is set once the server listens."""

    max_image_bytes: int
    files: dict[str, bytes] = field(default_factory=dict)
    good: list[str] = field(default_factory=list)
    base: str = ""

    def build(self, n_good: int, seed: int = 0) -> None:
        sizes = [(640, 480), (1024, 768), (1280, 960), (480, 640), (300, 200)]
        for i in range(n_good):
            name = f"good{i:02d}.jpg"
            self.files[name] = photo(*sizes[i % len(sizes)], seed=seed + i)
            self.good.append(name)
        rng = np.random.default_rng(seed + 1000)
        self.files["random.jpg"] = b"\xff\xd8\xff" + rng.bytes(20_000)
        self.files["page.html.jpg"] = b"<html><body>not an image</body></html>"
        self.files["truncated.jpg"] = photo(800, 600, seed + 2000)[:3000]
        big = photo(1280, 960, seed + 3000)
        self.files["huge-bytes.jpg"] = big + b"\0" * (self.max_image_bytes + 1 - len(big))
        self.files["huge-pixels.png"] = _png_canvas(12_000, 12_000)

    def url(self, route: str, name: str, delay: float | None = None) -> str:
        return f"{self.base}/{route}/{name}" + (f"?delay={delay:g}" if delay is not None else "")

    def random_good(self, rng: random.Random) -> str:
        return rng.choice(self.good)


async def start_host(host: ImageHost) -> web.AppRunner:
    async def serve(request: web.Request) -> web.Response:
        body = host.files.get(request.match_info["name"])
        if body is None:
            return web.Response(status=404, text="no such image")
        return web.Response(body=body, content_type="image/jpeg")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", "1")))
        return await serve(request)

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="status")

    app = web.Application()
    app.router.add_get("/img/{name}", serve)
    app.router.add_get("/slow/{name}", slow)
    app.router.add_get("/status/{code}", status)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    ip, port = runner.addresses[0][:2]
    host.base = f"http://{ip}:{port}"
    return runner
