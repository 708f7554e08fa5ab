"""The open_clip model behind a small interface: preprocess, tokenize, encode batches."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from app.inference.cpu_kernels import pack_blocks
from app.inference.fingerprint import weights_sha256
from app.inference.image_tower import ImageOptions, ImagePathError, ImageTower
from app.inference.payload import ImagePayload
from app.inference.preprocess import Preprocess
from app.inference.readback import PendingVectors, VectorRows
from app.inference.text_tower import TextTower

log = logging.getLogger("app.inference.model")

CONFIG_DIR = Path(__file__).parent / "model_configs"


class ModelLoadError(Exception):
    """The model cannot be loaded; the message says what to change."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What /health reports about the loaded model, and the embedding space it gives.

    `fingerprint` (64 hex digits, app.inference.fingerprint) names the embedding space: equal
    fingerprints, equal vectors. It tags the shared cache's entries; "" for a model whose space is
    unknown (one not loaded by `app.inference.loading.load_clip`), which then shares no cache.
    `weights_sha256` is the digest of the weights as loaded, `preprocess` the image transform.
    """

    model: str
    pretrained: str
    device: str
    dtype: str
    dim: int
    image_size: int
    context_length: int
    load_seconds: float = 0.0
    kernels: str = "torch"
    weights_sha256: str = ""
    preprocess: str = ""
    fingerprint: str = ""


class ItemPreparer(Protocol):
    """What the pipeline prepares items with: the model's info, its preprocessing and its tokenizer."""

    info: ModelInfo

    def preprocess(self, image: Image.Image) -> ImagePayload:
        """Turn an RGB picture into what the engine takes: the model's input tensor (CPU, float32), or pixels."""
        ...

    def tokenize(self, text: str) -> torch.Tensor:
        """Turn a text into a 1-D tensor of token ids (truncated to the context length)."""
        ...


class Embedder(ItemPreparer, Protocol):
    """What the engine needs from a model; the real one wraps open_clip."""

    def encode_images(self, pixels: list[ImagePayload]) -> VectorRows:
        """Return L2-normalised float32 vectors, one row per input, in order (or an input's error in its place)."""
        ...

    def encode_texts(self, tokens: list[torch.Tensor]) -> np.ndarray:
        """Return L2-normalised float32 vectors, one row per input, in order."""
        ...


def resolve_device(requested: str) -> str:
    """Map DEVICE=auto to cuda when available, else cpu (with a warning)."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        log.warning("DEVICE=auto found no CUDA device: running on the CPU, which is much slower")
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"DEVICE={requested} but no CUDA device is available; use DEVICE=cpu or auto")
    return requested


def _register_bundled_configs() -> None:
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)


def _resolve_pretrained(model_name: str, pretrained: str) -> str | None:
    """Return what to hand open_clip as `pretrained`, or explain why it cannot work."""
    import open_clip

    value = pretrained.strip()
    if value.lower() in {"", "none"}:
        log.warning("CLIP_PRETRAINED=none: random weights, embeddings are meaningless (dev only)")
        return None
    if os.path.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors")):
        if not os.path.isfile(value):
            raise ModelLoadError(
                f"CLIP_PRETRAINED={value!r} looks like a path but no such file exists; give an existing "
                "local checkpoint file, a pretrained tag, or 'none' for random weights"
            )
        return value
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if value not in tags:
        raise ModelLoadError(
            f"CLIP_PRETRAINED={value!r} is not a pretrained tag of {model_name} "
            f"(known: {', '.join(tags) or 'none'}); give a path to a local checkpoint file, "
            "or 'none' for random weights"
        )
    return value


class ClipEmbedder:
    """An open_clip model in eval mode, fp16 on CUDA and fp32 on CPU."""

    def __init__(
        self,
        model_name: str,
        pretrained: str,
        device: str,
        *,
        precision: str = "auto",
        buckets: tuple[int, ...] = (),
        compile: bool = False,
        packed_linear: bool = False,
        images: ImageOptions | None = None,
    ) -> None:
        import open_clip

        started = time.perf_counter()
        _register_bundled_configs()
        if model_name not in open_clip.list_models():
            raise ModelLoadError(
                f"CLIP_MODEL={model_name!r} is not an open_clip model or bundled config "
                "(e.g. ViT-B-32, ViT-L-14, or clip-tiny for tests)"
            )
        weights = _resolve_pretrained(model_name, pretrained)
        self.device = torch.device(resolve_device(device))
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=weights, device=self.device, precision=precision
            )
        # open_clip and huggingface_hub raise many types here; each one means the weights are unusable.
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(
                f"could not load weights {pretrained!r} for {model_name} ({exc}); without network access "
                "use CLIP_PRETRAINED=/path/to/checkpoint.pt (a local checkpoint file), or 'none' for random weights"
            ) from None
        self.model = model.eval()
        # The weights as loaded, before any kernel repacks them (app.inference.fingerprint).
        digest = weights_sha256(model)
        self._preprocess = Preprocess(preprocess)
        # The fields of open_clip's PreprocessCfg its eval transform was built from: an engine process's
        # workers rebuild the same transform from them (app.engine.front).
        self.preprocess_cfg: dict[str, object] = dict(getattr(model.visual, "preprocess_cfg", {}))
        self._tokenizer = open_clip.get_tokenizer(model_name)
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        packed = 0
        if packed_linear and self.device.type == "cpu" and self._dtype == torch.float32 and not compile:
            packed = pack_blocks(model, self._probe_vectors)
        self._encode_image = model.encode_image
        # Compiled graphs want fixed shapes: batches are padded up to the next bucket.
        self._buckets = tuple(sorted(buckets))
        if compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            self._encode_image = torch.compile(model.encode_image, mode=mode, dynamic=False)
        self._text = TextTower(model)
        self._staging: torch.Tensor | None = None
        options = images or ImageOptions()
        try:
            self._images = ImageTower(
                options,
                self._preprocess,
                self._run_image_tower,
                self.device,
                self._dtype,
                self.padded_size,
                self._image_hw()[0],
            )
        except ImagePathError as exc:
            raise ModelLoadError(str(exc)) from None
        self._plain = options.plain
        with torch.inference_mode():
            probe = torch.zeros(1, 3, *self._image_hw(), device=self.device, dtype=self._dtype)
            dim = int(model.encode_image(probe).shape[-1])
        self.info = ModelInfo(
            model=model_name,
            pretrained=pretrained if weights is not None else "none",
            device=str(self.device),
            dtype=str(self._dtype).removeprefix("torch."),
            dim=dim,
            image_size=self._image_hw()[0],
            context_length=int(self._tokenizer.context_length),
            load_seconds=time.perf_counter() - started,
            kernels="onednn-packed" if packed else "torch",
            weights_sha256=digest,
            preprocess=repr(preprocess),
        )

    def _image_hw(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def _probe_vectors(self) -> torch.Tensor:
        """Return normalised vectors of fixed inputs through both towers, to check a change of kernels."""
        image = torch.randn(2, 3, *self._image_hw(), generator=torch.Generator().manual_seed(0))
        text = self._tokenizer(["a photo of a cat", "a pencil drawing of an engine, seen from the side"])
        vectors = (self.model.encode_image(image), self.model.encode_text(text))
        return torch.cat([F.normalize(v.float(), dim=-1) for v in vectors])

    def preprocess(self, image: Image.Image) -> ImagePayload:
        return self._images.payload(image)

    def tokenize(self, text: str) -> torch.Tensor:
        return self._tokenizer([text])[0]

    def padded_size(self, n: int) -> int:
        """Return the batch size actually run for n items (the next bucket when compiled)."""
        return next((b for b in self._buckets if b >= n), n)

    def encode_images(self, pixels: list[ImagePayload]) -> VectorRows:
        tensors = [p for p in pixels if isinstance(p, torch.Tensor)]
        if not self._plain or len(tensors) != len(pixels):
            return self.start_images(pixels).wait()
        return self._encode_tensors(tensors)

    def start_images(self, pixels: list[ImagePayload]) -> PendingVectors:
        """Run a batch's forward pass and return while its vectors come back (the engine's overlap)."""
        return self._images.start(pixels)

    def image_inputs(self, pixels: list[ImagePayload]) -> torch.Tensor | None:
        """Return the batch the image tower would see for these payloads (float32, on the model's device)."""
        return self._images.inputs(pixels)

    def _run_image_tower(self, batch: torch.Tensor) -> torch.Tensor:
        return self._encode_image(batch)  # looked up each time: a compiled tower may replace it

    def _encode_tensors(self, pixels: list[torch.Tensor]) -> np.ndarray:
        """Today's path: float32 tensors stacked, moved, run; read back with `.cpu()`."""
        n = len(pixels)
        padded = self.padded_size(n)
        if padded > n:
            pixels = pixels + [torch.zeros_like(pixels[0])] * (padded - n)
        if self.device.type == "cuda":
            batch = self._stage(pixels).to(self.device, non_blocking=True)
        else:
            batch = torch.stack(pixels)
        with torch.inference_mode():
            features = self._encode_image(batch.to(self._dtype))
            return _normalised(features[:n])

    def _stage(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """Stack into one reusable pinned buffer; safe because results are read back before reuse."""
        n = len(pixels)
        if self._staging is None or self._staging.shape[0] < n:
            self._staging = torch.empty((max(n, 64), *pixels[0].shape), pin_memory=True)
        return torch.stack(pixels, out=self._staging[:n])

    def encode_texts(self, tokens: list[torch.Tensor]) -> np.ndarray:
        batch = torch.stack(tokens).to(self.device, non_blocking=True)
        with torch.inference_mode():
            return _normalised(self._text(batch))

    def warm_up(self) -> None:
        """Run one forward per image bucket and a text one, so no request pays one-off costs."""
        h, w = self._image_hw()
        for size in self._buckets or (1,):
            self.encode_images([torch.zeros(3, h, w)] * size)
        if not self._plain:
            self._images.warm_up()
        self.encode_texts([self.tokenize("warm-up")])


def _normalised(features: torch.Tensor) -> np.ndarray:
    return F.normalize(features.float(), dim=-1).cpu().numpy()
