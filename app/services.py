"""The objects one running app owns, built in the lifespan and reached through dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from app.engine import Engine
from app.model import ModelInfo
from app.pipeline import EmbeddingPipeline
from app.security import RequestVerifier
from app.settings import Settings


class Status(StrEnum):
    LOADING = "loading"
    OK = "ok"
    FAILED = "failed"
    DRAINING = "draining"


@dataclass(slots=True)
class Services:
    """Everything a request handler may need; the model parts appear once loading is done."""

    settings: Settings
    verifier: RequestVerifier
    status: Status = Status.LOADING
    reason: str | None = "model is loading"
    info: ModelInfo | None = None
    engine: Engine | None = None
    pipeline: EmbeddingPipeline | None = None

    def ready(self) -> tuple[EmbeddingPipeline, ModelInfo] | None:
        """Return the pipeline and model info when requests can be served."""
        engine_ok = self.engine is not None and self.engine.alive
        if self.status is Status.OK and engine_ok and self.pipeline and self.info:
            return self.pipeline, self.info
        return None
