"""The open_clip model behind a small interface: preprocess, tokenize, encode batches."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from app.inference.cpu_kernels import pack_blocks
from app.inference.fingerprint import weights_sha256
from app.inference.image_tower import ImageOptions, ImagePathError, ImageTower, NoTensorPath
from app.inference.payload import ImagePayload
from app.inference.preprocess import Preprocess
from app.inference.readback import PendingVectors, VectorRows
from app.inference.sources import (
    CONFIG_DIR,
    ModelLoadError,
    check_model_name,
    create_model,
    load_tokenizer,
    register_bundled_configs,
    resolve_device,
    resolve_pretrained,
    weights_named,
)
from app.inference.spec import MODALITIES
from app.inference.text_tower import TextTower
from app.inference.towers import ImageConfig, count_tokens, drop_tower, weights_bytes

__all__ = ["CONFIG_DIR", "ClipEmbedder", "Embedder", "ModelInfo", "ModelLoadError", "resolve_device"]

log = logging.getLogger("app.inference.model")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What /health and /v1/models report about a loaded model, and the embedding space it gives.

    `fingerprint` (64 hex digits, app.inference.fingerprint) names the embedding space: equal
    fingerprints, equal vectors. It tags the shared cache's entries; "" for a model whose space is
    unknown (one not loaded by `app.inference.loading.load_clip`), which then shares no cache.
    `weights_sha256` is the digest of the weights as loaded, `preprocess` the image transform.
    `name` is the name requests use (MODELS), `towers` the towers loaded, `image` open_clip's
    preprocess config, `image_path` how images reach the model (IMAGE_PREPROCESS/JPEG_DECODE, or
    `pil/pool` where the model's preprocessing has no tensor path), `memory_bytes` its weights' bytes.
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
    name: str = ""
    towers: str = "both"
    image: ImageConfig | None = None
    tokenizer: str = ""
    memory_bytes: int = 0
    matryoshka_dims: tuple[int, ...] = ()
    image_path: str = ""

    @property
    def served_name(self) -> str:
        """Return the name requests use for this model."""
        return self.name or self.model

    @property
    def modalities(self) -> tuple[str, ...]:
        """Return what the loaded towers embed."""
        return MODALITIES.get(self.towers, MODALITIES["both"])


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


class ClipEmbedder:
    """An open_clip model in eval mode, fp16 on CUDA and fp32 on CPU; one tower or both (`towers`)."""

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
        towers: str = "both",
    ) -> None:
        started = time.perf_counter()
        register_bundled_configs()
        check_model_name(model_name)
        weights = resolve_pretrained(model_name, pretrained)
        self.device = torch.device(resolve_device(device))
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        modalities = MODALITIES[towers]
        # With one tower, the model is built on the CPU and only that tower moves to the device.
        model, preprocess = create_model(
            model_name, pretrained, weights, self.device if towers == "both" else None, precision
        )
        self.model = model.eval()
        # The weights as loaded, both towers, before any kernel repacks them (app.inference.fingerprint):
        # one tower of a model gives the vectors of that tower of the whole model.
        digest = weights_sha256(model)
        image_config = ImageConfig.of(model)
        self._hw = image_config.size
        self._tokenizer = load_tokenizer(model_name)
        if towers != "both":
            drop_tower(model, towers)
            model.to(self.device)
        self._preprocess = Preprocess(preprocess)
        # The fields of open_clip's PreprocessCfg its eval transform was built from: an engine process's
        # workers rebuild the same transform from them (app.engine.front). None without an image tower.
        self.preprocess_cfg: dict[str, object] = dict(getattr(model.visual, "preprocess_cfg", None) or {})
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        self._has_images, self._has_texts = "image" in modalities, "text" in modalities
        packed = 0
        if packed_linear and self.device.type == "cpu" and self._dtype == torch.float32 and not compile:
            packed = pack_blocks(model, self._probe_vectors)
        self._encode_image = model.encode_image
        # Compiled graphs want fixed shapes: batches are padded up to the next bucket.
        self._buckets = tuple(sorted(buckets))
        if compile and self._has_images:
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            self._encode_image = torch.compile(model.encode_image, mode=mode, dynamic=False)
        self._text = TextTower(model)
        self._staging: torch.Tensor | None = None
        options = images or ImageOptions()
        self._images: ImageTower | None = None
        if self._has_images:
            self._images, options = self._image_tower(options)
        else:
            options = ImageOptions()
        self._plain = options.plain
        self.info = ModelInfo(
            model=model_name,
            pretrained=weights_named(model_name, pretrained, weights),
            device=str(self.device),
            dtype=str(self._dtype).removeprefix("torch."),
            dim=self._dim(),
            image_size=self._hw[0],
            context_length=int(self._tokenizer.context_length),
            load_seconds=time.perf_counter() - started,
            kernels="onednn-packed" if packed else "torch",
            weights_sha256=digest,
            preprocess=repr(preprocess),
            towers=towers,
            image=image_config,
            tokenizer=type(self._tokenizer).__name__,
            memory_bytes=weights_bytes(model),
            image_path=options.kind,
        )

    def _image_tower(self, options: ImageOptions) -> tuple[ImageTower, ImageOptions]:
        """Build the image path the settings ask for; a model whose preprocessing has no tensor path takes the exact one."""
        try:
            return self._tower_for(options), options
        except NoTensorPath as exc:
            log.warning("%s; this model keeps the exact path (IMAGE_PREPROCESS=pil, JPEG_DECODE=pool)", exc)
            plain = ImageOptions(max_pixels=options.max_pixels, fast_decode=options.fast_decode)
            return self._tower_for(plain), plain
        except ImagePathError as exc:
            raise ModelLoadError(str(exc)) from None

    def _tower_for(self, options: ImageOptions) -> ImageTower:
        return ImageTower(
            options, self._preprocess, self._run_image_tower, self.device, self._dtype, self.padded_size, self._hw[0]
        )

    def _dim(self) -> int:
        with torch.inference_mode():
            if self._has_images:
                probe = torch.zeros(1, 3, *self._hw, device=self.device, dtype=self._dtype)
                return int(self.model.encode_image(probe).shape[-1])
            return int(self._text(self._tokenizer(["probe"]).to(self.device)).shape[-1])

    def _probe_vectors(self) -> torch.Tensor:
        """Return normalised vectors of fixed inputs through the loaded towers, to check a change of kernels."""
        vectors = []
        if self._has_images:
            vectors.append(
                self.model.encode_image(torch.randn(2, 3, *self._hw, generator=torch.Generator().manual_seed(0)))
            )
        if self._has_texts:
            text = self._tokenizer(["a photo of a cat", "a pencil drawing of an engine, seen from the side"])
            vectors.append(self.model.encode_text(text))
        return torch.cat([F.normalize(v.float(), dim=-1) for v in vectors])

    def preprocess(self, image: Image.Image) -> ImagePayload:
        return self._image_path().payload(image)

    def tokenize(self, text: str) -> torch.Tensor:
        return self._tokenizer([text])[0]

    def count_tokens(self, text: str) -> int:
        """Return how many tokens the model sees of `text` (markers in, the context at most)."""
        return count_tokens(self._tokenizer, text)

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
        return self._image_path().start(pixels)

    def image_inputs(self, pixels: list[ImagePayload]) -> torch.Tensor | None:
        """Return the batch the image tower would see for these payloads (float32, on the model's device)."""
        return self._image_path().inputs(pixels)

    def _image_path(self) -> ImageTower:
        if self._images is None:
            raise RuntimeError(f"{self.info.model} was loaded with its text tower only (towers=text)")
        return self._images

    def _run_image_tower(self, batch: torch.Tensor) -> torch.Tensor:
        return self._encode_image(batch)  # looked up each time: a compiled tower may replace it

    def _encode_tensors(self, pixels: list[torch.Tensor]) -> np.ndarray:
        """Today's path: float32 tensors stacked, moved, run; read back with `.cpu()`."""
        self._image_path()
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
        if not self._has_texts:
            raise RuntimeError(f"{self.info.model} was loaded with its image tower only (towers=image)")
        batch = torch.stack(tokens).to(self.device, non_blocking=True)
        with torch.inference_mode():
            return _normalised(self._text(batch))

    def warm_up(self) -> None:
        """Run one forward per image bucket and a text one, so no request pays one-off costs."""
        if self._images is not None:
            for size in self._buckets or (1,):
                self.encode_images([torch.zeros(3, *self._hw)] * size)
            if not self._plain:
                self._images.warm_up()
        if self._has_texts:
            self.encode_texts([self.tokenize("warm-up")])


def _normalised(features: torch.Tensor) -> np.ndarray:
    return F.normalize(features.float(), dim=-1).cpu().numpy()
