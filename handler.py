"""Legacy RunPod serverless handler (kept beside the pod service for rollback).

Input `{"image_url", "timestamp", "signature"}` signed as HMAC-SHA256(secret, "image_url|timestamp");
output `{"embedding": [...], "dim": 512}` or `{"error": {"code", "message"}}`. Settings are the
service's own environment variables (EMBEDDING_HMAC_SECRET, CLIP_MODEL, CLIP_PRETRAINED, DEVICE, ...).

    python handler.py                                  # as a RunPod serverless worker
    python handler.py --rp_serve_api --rp_api_port 8010 --rp_api_host 127.0.0.1   # local /runsync
"""

from __future__ import annotations

import json
import sys

from pydantic import ValidationError

from app.inference.model import ModelLoadError
from app.legacy import LegacyHandler
from app.settings import Settings

_worker: LegacyHandler | None = None


def get_worker() -> LegacyHandler:
    """Return this process's handler, loading the model on first use (once per worker process)."""
    global _worker
    if _worker is None:
        _worker = LegacyHandler(Settings())
    return _worker


async def handler(job: dict[str, object]) -> dict[str, object]:
    """The RunPod entry point: one job in, its output out."""
    return await get_worker().handle(job)


async def local_api_handler(job: dict[str, object]) -> dict[str, object]:
    """`handler` for `--rp_serve_api`: the SDK's local API declares the job `error` a string (its
    JobOutput model) and answers 500 to an object, so the error object travels as JSON text there.
    The RunPod platform takes the object as is; the client reads both forms."""
    output = await handler(job)
    if isinstance(output.get("error"), dict):
        return {"error": json.dumps(output["error"])}
    return output


def main() -> int:
    import runpod

    try:
        worker = get_worker()  # load the model before taking jobs: a bad config fails at start
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]
        print("invalid configuration:\n" + "\n".join(lines), file=sys.stderr)
        return 2
    except ModelLoadError as exc:
        print(f"start-up failed: {exc}", file=sys.stderr)
        return 1
    print(f"legacy handler ready: model dim {worker.dim}", file=sys.stderr)
    entry = local_api_handler if "--rp_serve_api" in sys.argv else handler
    runpod.serverless.start({"handler": entry})
    return 0


if __name__ == "__main__":
    sys.exit(main())
