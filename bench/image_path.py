"""The image path stage by stage, in this process, and each path's parity with open_clip.

Prints, for 1 MP and tiny JPEGs:
- host: the decode threads' work per image on one core: today's decode + open_clip transform (with
  FAST_DECODE's reduced decode), the decode alone (IMAGE_PREPROCESS=tensor), the header check alone
  (JPEG_DECODE=engine), and the tensor path's resize + crop + normalise against Pillow's (one image);
- the engine's stages on --device at --batch: JPEG decode (torchcodec, and beside it torchvision's
  deprecated decoder and nvImageCodec where installed), the tensor preprocess from decoded pixels, the
  forward pass; then the engine's whole batch per path, one batch at a time and overlapped (the next
  started before the current one's vectors are waited for), with the host CPU it costs per image;
- parity: each path's cosine with open_clip's PIL transform + fp32 forward on the CPU, min and mean;
- a hostile batch: one JPEG in 8 with a corrupt scan, several times: what failed, and device memory.

Usage: python -m bench.image_path [--device cuda] [--model ViT-B-32] [--dtype fp16] [--batch 256]
           [--photos ../shared/photos] [--seconds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image, ImageOps

from app.errors import ServiceError
from app.inference.decode import decode_image
from app.inference.image_tower import ImageOptions
from app.inference.jpeg_batch import JpegBatchDecoder
from app.inference.jpeg_route import engine_jpeg
from app.inference.model import ClipEmbedder
from app.inference.payload import DecodedImage, ImagePayload
from app.inference.preprocess import Preprocess
from bench import photos as photo_sets

MAX_PIXELS = 10**9
T = TypeVar("T")


def timed(fn: Callable[[], object], items: int, seconds: float, sync: Callable[[], None]) -> tuple[float, float]:
    """Return items/s of `fn` and the process's CPU µs per item, after one warm-up call."""
    fn()
    sync()
    runs, wall, cpu = 0, time.perf_counter(), time.process_time()
    while runs < 2 or time.perf_counter() - wall < seconds:
        fn()
        runs += 1
    sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return runs * items / wall, cpu / (runs * items) * 1e6


def per_image_ms(fn: Callable[[T], object], items: list[T], repeats: int = 3) -> float:
    """Return the best of `repeats` rounds of fn over every item, in ms per item (this thread)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - started) / len(items))
    return best * 1e3


def device_memory_mib() -> str:
    if not torch.cuda.is_available():
        return "n/a (no CUDA)"
    torch.cuda.synchronize()
    used = "n/a"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        used = out.stdout.split()[0] if out.returncode == 0 and out.stdout.strip() else "n/a"
    except (OSError, subprocess.SubprocessError):
        pass
    mib = 2**20
    return (
        f"torch allocated {torch.cuda.memory_allocated() / mib:.0f} MiB, reserved "
        f"{torch.cuda.memory_reserved() / mib:.0f} MiB; nvidia-smi used {used} MiB"
    )


class Paths:
    """One model's weights behind each image path."""

    def __init__(self, model: str, device: str, dtype: str) -> None:
        torch.manual_seed(0)
        self.plain = ClipEmbedder(model, "none", device, precision=dtype)
        self.device = self.plain.device
        cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(self.plain.model))
        self.transform = image_transform_v2(cfg, is_train=False)
        self.tensor_path = Preprocess(self.transform).tensor_path(self.device)
        self.size = self.plain.info.image_size
        self._model, self._device, self._dtype = model, device, dtype
        self._variants: dict[str, ClipEmbedder] = {}

    def variant(self, preprocess: str, jpeg_decode: str = "pool") -> ClipEmbedder:
        """The same weights behind IMAGE_PREPROCESS, JPEG_DECODE and CUDA_BLOCKING_WAIT=1 (which moves no vector)."""
        key = f"{preprocess}/{jpeg_decode}"
        if key not in self._variants:
            options = ImageOptions(preprocess, jpeg_decode, blocking_wait=True, max_pixels=MAX_PIXELS)  # type: ignore[arg-type]
            embedder = ClipEmbedder(self._model, "none", self._device, precision=self._dtype, images=options)
            embedder.model.load_state_dict(self.plain.model.state_dict())
            self._variants[key] = embedder
        return self._variants[key]

    def reference(self, datas: list[bytes]) -> np.ndarray:
        """open_clip's own vectors: its PIL transform on the upright picture, the fp32 forward on the CPU."""
        model = open_clip.create_model(self._model).eval()
        model.load_state_dict(self.plain.model.state_dict())  # the same weights (as this dtype rounded them)
        with torch.inference_mode():
            pixels = torch.stack([self.transform(ImageOps.exif_transpose(Image.open(io.BytesIO(d)))) for d in datas])
            return torch.nn.functional.normalize(model.encode_image(pixels), dim=-1).numpy()


def host_stages(paths: Paths, sets: dict[str, list[bytes]]) -> None:
    print("== the decode threads' work per image, one core (ms)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a decode thread's view; and the tensor path's on one core
    try:
        _host_stages(paths, sets)
    finally:
        torch.set_num_threads(threads)


def _host_stages(paths: Paths, sets: dict[str, list[bytes]]) -> None:
    draft = paths.size
    transform = paths.transform
    tensor_path = Preprocess(transform).tensor_path(torch.device("cpu"))
    assert tensor_path is not None
    for name, datas in sets.items():
        today = per_image_ms(
            lambda d: paths.plain.preprocess(decode_image(d, max_pixels=MAX_PIXELS, draft_size=draft)), datas
        )
        decode = per_image_ms(lambda d: np.asarray(decode_image(d, max_pixels=MAX_PIXELS, draft_size=draft)), datas)
        header = per_image_ms(lambda d: engine_jpeg(d, max_pixels=MAX_PIXELS), datas)
        pictures = [decode_image(d, max_pixels=MAX_PIXELS, draft_size=draft) for d in datas]
        pil = per_image_ms(paths.plain.preprocess, pictures)
        tensor = per_image_ms(lambda p: tensor_path([torch.from_numpy(np.array(p)).permute(2, 0, 1)]), pictures)
        print(
            f"{name:5s} decode + open_clip transform (today) {today:6.2f} | decode alone {decode:6.2f} | "
            f"header check {header * 1e3:5.0f} µs | transform of a decoded picture: Pillow + numpy {pil:5.2f}, "
            f"tensor path {tensor:5.2f} ({pil / tensor:.1f}x)"
        )


def device_stages(paths: Paths, sets: dict[str, list[bytes]], batch: int, seconds: float) -> None:
    device, sync = paths.device, torch.cuda.synchronize if paths.device.type == "cuda" else (lambda: None)
    print(f"== the engine's stages on {device}, batch {batch} (images/s; host CPU µs per image)")
    decoder = JpegBatchDecoder(device)
    for name, datas in sets.items():
        encoded = [e for d in datas if (e := engine_jpeg(d, max_pixels=MAX_PIXELS)) is not None]
        work = (encoded * (batch // max(1, len(encoded)) + 1))[:batch]
        rates = {"torchcodec": timed(lambda w=work: decoder.decode(w), batch, seconds, sync)}
        rates |= other_decoders([e.data for e in work], device, seconds, sync)
        decoded = [t for t in decoder.decode(work) if t is not None]
        assert paths.tensor_path is not None
        rates["tensor preprocess"] = timed(lambda d=decoded: paths.tensor_path(d), batch, seconds, sync)
        print(f"{name:5s} " + " | ".join(f"{k} {r:8.0f}/s ({c:5.0f} µs)" for k, (r, c) in rates.items()))
    pixels = [torch.randn(3, paths.size, paths.size) for _ in range(batch)]
    forward, cpu = timed(lambda: paths.plain.encode_images(pixels), batch, seconds, sync)
    print(f"forward alone (float32 pixels from the host, today's path) {forward:8.0f}/s ({cpu:5.0f} µs)")


def other_decoders(datas: list[bytes], device: torch.device, seconds: float, sync: Callable[[], None]) -> dict:
    """Rates of the decoders not chosen, where installed: torchvision's (deprecated) and nvImageCodec."""
    out = {}
    try:
        from torchvision.io import decode_jpeg

        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        out["torchvision"] = timed(lambda: decode_jpeg(tensors, device=device), len(datas), seconds, sync)
    except Exception as exc:  # noqa: BLE001
        print(f"torchvision decode_jpeg: n/a ({type(exc).__name__}: {str(exc)[:80]})")
    if device.type == "cuda":
        try:
            from nvidia import nvimgcodec

            nvdecoder = nvimgcodec.Decoder()
            out["nvimgcodec"] = timed(lambda: nvdecoder.decode(datas), len(datas), seconds, sync)
        except Exception as exc:  # noqa: BLE001
            print(f"nvImageCodec: n/a ({type(exc).__name__}: {str(exc)[:80]})")
    return out


def engine_batches(paths: Paths, sets: dict[str, list[bytes]], batch: int, seconds: float) -> None:
    print(
        f"== the engine's whole batch, JPEG bytes or pool output to vectors, batch {batch} (images/s; host CPU µs/image)"
    )
    draft = paths.size
    for name, datas in sets.items():
        pictures = [decode_image(d, max_pixels=MAX_PIXELS, draft_size=draft) for d in datas]
        today = [paths.plain.preprocess(p) for p in pictures]
        uint8, tensor, engine = paths.variant("pil-uint8"), paths.variant("tensor"), paths.variant("tensor", "engine")
        # (label, model, payloads, torch threads: 0 for the process's)
        cases: list[tuple[str, ClipEmbedder, list[ImagePayload], int]] = [
            ("pil (today)", paths.plain, today, 0),
            ("pil (today), 1 torch thread", paths.plain, today, 1),
            ("pil-uint8 + blocking wait", uint8, [uint8.preprocess(p) for p in pictures], 0),
            ("tensor (pool decode)", tensor, [DecodedImage(np.asarray(p)) for p in pictures], 0),
            ("engine decode", engine, [e for d in datas if (e := engine_jpeg(d, max_pixels=MAX_PIXELS))], 0),
        ]
        threads = torch.get_num_threads()
        for label, embedder, payloads, count in cases:
            work = (payloads * (batch // max(1, len(payloads)) + 1))[:batch]
            torch.set_num_threads(count or threads)
            try:
                one, one_cpu = timed(lambda e=embedder, w=work: e.encode_images(w), batch, seconds, lambda: None)
                over, over_cpu = overlapped(embedder, work, seconds)
            finally:
                torch.set_num_threads(threads)
            print(
                f"{name:5s} {label:28s} {one:8.0f}/s ({one_cpu:5.0f} µs)   overlapped {over:8.0f}/s ({over_cpu:5.0f} µs)"
            )


def overlapped(embedder: ClipEmbedder, work: list[ImagePayload], seconds: float) -> tuple[float, float]:
    """Start each batch before waiting for the previous one's vectors, as ENGINE_OVERLAP does."""
    pending = embedder.start_images(work)
    runs, wall, cpu = 0, time.perf_counter(), time.process_time()
    while runs < 2 or time.perf_counter() - wall < seconds:
        started = embedder.start_images(work)
        pending.wait()
        pending = started
        runs += 1
    pending.wait()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return runs * len(work) / wall, cpu / (runs * len(work)) * 1e6


def parity(paths: Paths, datas: list[bytes]) -> None:
    print(
        f"== parity with open_clip's PIL transform + fp32 forward, {paths.plain.info.dtype} here ({len(datas)} photos): "
        "cosine min / mean; the model's input against today's (FAST_DECODE=0), in levels of a byte"
    )
    reference = paths.reference(datas)
    full = [decode_image(d, max_pixels=MAX_PIXELS) for d in datas]
    drafted = [decode_image(d, max_pixels=MAX_PIXELS, draft_size=paths.size) for d in datas]
    tensor, uint8, engine = paths.variant("tensor"), paths.variant("pil-uint8"), paths.variant("tensor", "engine")
    encoded = [engine_jpeg(d, max_pixels=MAX_PIXELS) or DecodedImage(np.asarray(p)) for d, p in zip(datas, full)]
    cases: dict[str, tuple[ClipEmbedder, list[ImagePayload]]] = {
        "pil (today, FAST_DECODE=0)": (paths.plain, [paths.plain.preprocess(p) for p in full]),
        "pil (today, FAST_DECODE=1)": (paths.plain, [paths.plain.preprocess(p) for p in drafted]),
        "pil-uint8 (FAST_DECODE=0)": (uint8, [uint8.preprocess(p) for p in full]),
        "tensor (FAST_DECODE=0)": (tensor, [tensor.preprocess(p) for p in full]),
        "tensor (FAST_DECODE=1)": (tensor, [tensor.preprocess(p) for p in drafted]),
        "engine decode": (engine, encoded),
    }
    # One level of a byte, in the normalised input of each channel: 1 / 255 / std.
    std = torch.tensor(paths.transform.transforms[-1].std, dtype=torch.float32).view(1, 3, 1, 1)
    base_inputs: torch.Tensor | None = None
    base_vectors: np.ndarray | None = None
    for label, (embedder, payloads) in cases.items():
        vectors = np.stack(embedder.encode_images(payloads))
        inputs = embedder.image_inputs(payloads)
        assert inputs is not None
        levels = inputs.float().cpu() * 255 * std
        if base_inputs is None:
            base_inputs, base_vectors = levels, vectors
        cosines = np.sum(vectors * reference, axis=1)
        delta = (levels - base_inputs).abs()
        same = (
            " (bit-identical vectors)" if np.array_equal(vectors, base_vectors) and label != next(iter(cases)) else ""
        )
        print(
            f"{label:27s} {cosines.min():.7f} / {cosines.mean():.7f} (1 - min {1 - cosines.min():.1e})   input: mean "
            f"{delta.mean():.3f} levels, {100 * float((delta > 1.01).float().mean()):.2f}% over one level{same}"
        )


def hostile(paths: Paths, datas: list[bytes], batch: int, rounds: int) -> None:
    engine = paths.variant("tensor", "engine")
    encoded = [e for d in datas if (e := engine_jpeg(d, max_pixels=MAX_PIXELS))]
    good = encoded[0].data
    sos = good.index(b"\xff\xda")
    corrupt = engine_jpeg(good[: sos + 20] + np.random.default_rng(0).bytes(5000) + b"\xff\xd9", max_pixels=MAX_PIXELS)
    assert corrupt is not None
    work = [corrupt if i % 8 == 3 else encoded[i % len(encoded)] for i in range(batch)]
    print(f"== hostile batches: {batch} JPEGs, one in 8 with a corrupt scan, {rounds} rounds")
    engine.encode_images(work)
    before = device_memory_mib()
    started = time.perf_counter()
    for _ in range(rounds):
        outcomes = engine.encode_images(work)
    failed = sum(isinstance(o, ServiceError) for o in outcomes)
    print(
        f"failed {failed} of {batch} (expected {batch // 8 + (batch % 8 > 3)}), "
        f"{rounds * batch / (time.perf_counter() - started):.0f} images/s"
    )
    print(f"device memory before: {before}\ndevice memory after:  {device_memory_mib()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--photos", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "photos"))
    parser.add_argument("--hostile-rounds", type=int, default=5)
    parser.add_argument("--parts", default="host,device,engine,parity,hostile")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    real = photo_sets.from_folder(args.photos, "*-1mp.jpg")
    sets = {"1mp": real or photo_sets.generated_1mp(), "tiny": photo_sets.tiny()}
    print(
        f"photos: {len(sets['1mp'])} 1 MP ({'real, ' + args.photos if real else 'generated'}), {len(sets['tiny'])} tiny (64x48)"
    )
    paths = Paths(args.model, args.device, args.dtype)
    print(f"model {args.model} on {paths.device}, {paths.plain.info.dtype}, torch {torch.__version__}")
    if "host" in parts:
        host_stages(paths, sets)
    if "device" in parts:
        device_stages(paths, sets, args.batch, args.seconds)
    if "engine" in parts:
        engine_batches(paths, sets, args.batch, args.seconds)
    if "parity" in parts:
        extra = photo_sets.from_folder(args.photos, "*-native.jpg") + photo_sets.from_folder(args.photos, "edge/*.jpg")
        parity(paths, sets["1mp"] + extra + sets["tiny"][:2])
    if "hostile" in parts:
        hostile(paths, sets["1mp"], args.batch, args.hostile_rounds)


if __name__ == "__main__":
    main()
