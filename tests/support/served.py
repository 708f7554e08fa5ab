"""Settings for several served models (MODELS), and open_clip's own vectors to compare the service's with."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from app.settings import Settings
from tests.support.api import SECRET


def models_settings(models: list[dict[str, object]], **overrides: object) -> Settings:
    """Settings serving `models` (MODELS) on the CPU, signed requests, private URLs allowed, exact decoding."""
    values: dict[str, object] = {
        "embedding_hmac_secret": SECRET,
        "device": "cpu",
        "allow_private_urls": True,
        "image_download_timeout_s": 3,
        "fast_decode": False,
        "models": json.dumps(models),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Reference:
    """open_clip's own model, transform and tokenizer for a model name: what the service must equal."""

    model: Any
    preprocess: Any
    tokenizer: Any

    @classmethod
    def load(cls, name: str) -> Reference:
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(name)
        return cls(model.eval(), preprocess, open_clip.get_tokenizer(name))

    def images(self, datas: list[bytes]) -> np.ndarray:
        """Return the normalised vectors of encoded images, each opened by Pillow and transformed by open_clip."""
        batch = torch.stack([self.preprocess(Image.open(io.BytesIO(data))) for data in datas])
        with torch.inference_mode():
            return torch.nn.functional.normalize(self.model.encode_image(batch), dim=-1).numpy()

    def texts(self, texts: list[str]) -> np.ndarray:
        """Return the normalised vectors of texts, tokenised by open_clip's tokenizer of the model."""
        with torch.inference_mode():
            return torch.nn.functional.normalize(self.model.encode_text(self.tokenizer(texts)), dim=-1).numpy()


def signed_call(base: str, path: str, body: dict[str, object], **kwargs: Any) -> tuple[int, dict, dict[str, str]]:
    """POST `body` signed as a client that sends options signs it: the options it holds are covered too."""
    from clip_client.signing import options_payload_id, signed_headers

    from tests.support.api import PAYLOAD_ID, call

    payload_id = options_payload_id(PAYLOAD_ID[path](body), body)  # type: ignore[arg-type]
    headers = signed_headers(SECRET, "POST", path, payload_id) | kwargs.pop("headers", {})
    return call(base, path, raw=json.dumps(body).encode(), secret=None, headers=headers, **kwargs)
