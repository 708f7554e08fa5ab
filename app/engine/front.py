"""What an HTTP worker prepares items with when the model runs in an engine process: the engine's model info,
its image transform and its tokenizer, rebuilt from the engine's Ready message.

The worker decodes and preprocesses as one process does (IMAGE_PREPROCESS, JPEG_DECODE, as the engine
runs them), so that the engine gets the very payloads it would have made itself: the vectors are
bit-identical. A model whose transform open_clip cannot rebuild from a config (a test's or a benchmark's
stand-in) gets decoded RGB pixels.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch
from PIL import Image

from app.engine.wire import Ready
from app.inference.image_tower import PreprocessMode, image_payload
from app.inference.model import ModelInfo, ModelLoadError
from app.inference.payload import DecodedImage, ImagePayload
from app.inference.preprocess import Preprocess
from app.inference.sources import load_tokenizer, register_bundled_configs
from app.inference.towers import ImageConfig, count_tokens


class RemoteModel:
    """The engine's model as a worker sees it: info, preprocess and tokenize, no weights."""

    def __init__(self, ready: Ready) -> None:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.info = model_info(ready.info)
        register_bundled_configs()
        self._tokenizer = load_tokenizer(ready.tokenizer)
        self._mode: PreprocessMode | None = None
        self._preprocess: Preprocess | None = None
        if ready.preprocess_cfg is not None:
            # JSON gave lists back for open_clip's tuples; its transform's repr (the fingerprint's) says tuples.
            cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in ready.preprocess_cfg.items()}
            transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
            if repr(transform) != self.info.preprocess:
                raise ModelLoadError(
                    f"the workers cannot rebuild the engine's image transform ({transform!r} is not "
                    f"{self.info.preprocess}): run this model with ENGINE_PROCESS=off"
                )
            self._preprocess = Preprocess(transform)
            self._mode = ready.image_preprocess  # type: ignore[assignment]

    def preprocess(self, image: Image.Image) -> ImagePayload:
        """Return what the engine takes for a decoded RGB picture, made here on the decode threads."""
        if self._preprocess is None or self._mode is None:
            return DecodedImage(np.asarray(image))
        return image_payload(self._mode, self._preprocess, image)

    def tokenize(self, text: str) -> torch.Tensor:
        tokens: torch.Tensor = self._tokenizer([text])[0]
        return tokens

    def count_tokens(self, text: str) -> int:
        """Return how many tokens the model sees of `text` (markers in, the context at most)."""
        return count_tokens(self._tokenizer, text)


def model_info(sent: dict[str, object]) -> ModelInfo:
    """Return the engine's ModelInfo from its JSON form (lists back to tuples, the image config a dataclass)."""
    known = {f.name for f in fields(ModelInfo)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in sent.items() if k in known}
    image = values.get("image")
    if isinstance(image, dict):
        values["image"] = ImageConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in image.items()})  # type: ignore[arg-type]
    return ModelInfo(**values)  # type: ignore[arg-type]
