"""What the embedding endpoints share: the JSON answer, the batch answer, the batch-size and text checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
from fastapi.responses import Response

from app.api.errors import error_body
from app.api.observe import RequestRecord
from app.errors import InvalidRequest, ServiceError
from app.inference.model import ModelInfo
from app.inference.outputs import AS_IS, OutputSpec
from app.schemas import ErrorResponse

ItemOutcome = np.ndarray | ServiceError
# The error answers the OpenAPI document lists for every embedding endpoint.
ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 413, 422, 429, 502, 503, 504)
}


def json_response(content: object, status_code: int = 200) -> Response:
    """Serialise with orjson; numpy float32 vectors go out without a Python-float detour."""
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status_code, media_type="application/json"
    )


def check_batch_size(field: str, what: str, count: int, limit: int) -> None:
    """Refuse a list longer than MAX_BATCH_SIZE, naming the field and the setting."""
    if count > limit:
        raise InvalidRequest(f"{field} holds {count} {what}; at most MAX_BATCH_SIZE={limit} are accepted per request")


def text_error(text: str, limit: int) -> InvalidRequest | None:
    """Return why a text cannot be embedded (too long, blank), or None."""
    if len(text) > limit:
        return InvalidRequest(f"text is {len(text)} characters; at most {limit} are accepted")
    if not text.strip():
        return InvalidRequest("text is blank")
    return None


def note_failed_items(record: RequestRecord, outcomes: Sequence[ItemOutcome]) -> None:
    """Tell the request's log line and metrics the code of each failed item."""
    record.failed_items.extend(o.code for o in outcomes if isinstance(o, ServiceError))


def vector_response(vector: np.ndarray, info: ModelInfo, output: OutputSpec) -> Response:
    """Answer one vector, in the type and length the request asked for."""
    return json_response({"embedding": output.apply(vector), **_about(info, output)})


def batch_response(
    outcomes: Sequence[ItemOutcome], info: ModelInfo, record: RequestRecord, output: OutputSpec = AS_IS
) -> Response:
    """Answer a batch: one result per item in input order, each a vector or its error (counted once)."""
    note_failed_items(record, outcomes)
    results = [_batch_item(i, outcome, output) for i, outcome in enumerate(outcomes)]
    succeeded = sum(1 for r in results if r["error"] is None)
    return json_response(
        {"results": results, "succeeded": succeeded, "failed": len(results) - succeeded, **_about(info, output)}
    )


def _about(info: ModelInfo, output: OutputSpec) -> dict[str, object]:
    """Return what an answer says of its vectors: their dimension, the model, and their type when not float32."""
    about: dict[str, object] = {"dim": output.dimensions or info.dim, "model": info.served_name}
    if output.embedding_type != "float32":
        about["embedding_type"] = output.embedding_type
    return about


def _batch_item(index: int, outcome: ItemOutcome, output: OutputSpec) -> dict[str, object]:
    if isinstance(outcome, ServiceError):
        return {"index": index, "embedding": None, "error": error_body(outcome.code, outcome.message)["error"]}
    return {"index": index, "embedding": output.apply(outcome), "error": None}
