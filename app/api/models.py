"""`GET /v1/models`: the served models, shaped like OpenAI's list, with what a client needs to use each one.

No authentication, as /health: it names models and their settings, nothing a caller could abuse. A
model's `fingerprint` names its embedding space (app.inference.fingerprint): a client keeps it with
the vectors it stores and never mixes two in one index (examples/visual_search does so).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.answers import json_response
from app.api.deps import ServicesDep
from app.errors import NotFound
from app.inference.outputs import EMBEDDING_TYPES
from app.inference.registry import ServedModel
from app.inference.spec import spoken_list
from app.schemas import ErrorResponse, ModelCard, ModelList

router = APIRouter()
OWNER = "clip-service"


@router.get("/v1/models", response_model=ModelList, summary="The served models and their settings")
async def list_models(services: ServicesDep) -> Response:
    """List every served model, loaded or not, in MODELS' order; the default first when none is marked."""
    return json_response({"object": "list", "data": [model_card(m) for m in services.served()]})


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ModelCard,
    responses={404: {"model": ErrorResponse}},
    summary="One served model (by name or alias)",
)
async def get_model(model_id: str, services: ServicesDep) -> Response:
    for model in services.served():
        if model_id in model.spec.names:
            return json_response(model_card(model))
    names = [name for model in services.served() for name in model.spec.names]
    raise NotFound(f"model {model_id[:100]!r} is not served here: this service serves {spoken_list(names)}")


def model_card(model: ServedModel) -> dict[str, object]:
    """Return one model's entry of GET /v1/models (the last load's figures, once it has loaded)."""
    spec, info = model.spec, model.info
    modalities = list(spec.modalities)
    image: dict[str, object] | None = None
    text: dict[str, object] | None = None
    if info is not None and info.image is not None and "image" in modalities:
        cfg = info.image
        image = {
            "size": list(cfg.size),
            "resize_mode": cfg.resize_mode,
            "interpolation": cfg.interpolation,
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "path": info.image_path,
        }
    if info is not None and "text" in modalities:
        text = {"context_length": info.context_length, "tokenizer": info.tokenizer}
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.loaded_at or 0),
        "owned_by": OWNER,
        "aliases": list(spec.names[1:]),
        "default": spec.default,
        "open_clip": spec.model,
        "pretrained": info.pretrained if info is not None else spec.pretrained,
        "status": model.state.value,
        "loaded": model.ready,
        "lazy": spec.lazy,
        "idle_ttl_s": spec.idle_ttl_s,
        "load_seconds": model.load_seconds,
        "modalities": modalities,
        "dim": info.dim if info is not None else None,
        "dtype": info.dtype if info is not None else None,
        "device": info.device if info is not None else None,
        "fingerprint": (info.fingerprint or None) if info is not None else None,
        "memory_bytes": info.memory_bytes if info is not None and model.loaded is not None else 0,
        "image": image,
        "text": text,
        "matryoshka_dims": list(spec.matryoshka_dims or ()),
        "embedding_types": list(EMBEDDING_TYPES),
    }


def model_health(model: ServedModel) -> dict[str, object]:
    """Return one model's entry of /health's `models` (MODELS set)."""
    entry: dict[str, object] = {
        "status": model.state.value,
        "loaded": model.ready,
        "default": model.spec.default,
        "on_demand": model.on_demand,
        "memory_bytes": model.info.memory_bytes if model.info is not None and model.loaded is not None else 0,
    }
    if model.info is not None:
        entry |= {"model": model.info.model, "dim": model.info.dim, "fingerprint": model.info.fingerprint}
    if model.loaded is not None:
        entry["engine"] = model.loaded.engine.snapshot()
    if model.error is not None:
        entry["error"] = model.error
    return entry
