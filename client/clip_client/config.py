"""The client's configuration, read from the environment like the worker's config.

CLIP_INFERENCE_BACKEND      runpod_pod (default) or runpod_serverless (the legacy handler; rollback)
CLIP_POD_BASE_URL           the pod's base URL, e.g. https://<pod-id>-8000.proxy.runpod.net
CLIP_POD_TIMEOUT_S          seconds per HTTP attempt (default 60)
EMBEDDING_HMAC_SECRET       the shared secret; with a comma-separated list the FIRST one signs
RUNPOD_ENDPOINT_URL         serverless: https://api.runpod.ai/v2/<endpoint-id> (/runsync is appended)
RUNPOD_API_KEY              serverless: the RunPod API key (sent as a Bearer token)
CLIP_SERVERLESS_TIMEOUT_S   serverless: seconds per /runsync attempt (default 120; cold starts are slow)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from clip_client.errors import ClipConfigError

BACKENDS = ("runpod_pod", "runpod_serverless")


def first_secret(raw: str | None) -> str | None:
    """Return the signing secret: the first of a comma-separated list (the others only verify)."""
    if raw is None:
        return None
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    return keys[0] if keys else None


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ClipConfigError(f"{name}={raw!r} is not a number of seconds; e.g. {name}={default:g}") from None
    if value <= 0:
        raise ClipConfigError(f"{name} must be greater than 0 (got {raw})")
    return value


def _url(env: Mapping[str, str], name: str, example: str) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.startswith(("http://", "https://")):
        raise ClipConfigError(f"{name}={raw!r} must start with http:// or https://, e.g. {example}")
    return raw.rstrip("/")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything `make_clip_client()` needs; `from_env()` reads and checks it."""

    backend: str = "runpod_pod"
    pod_base_url: str | None = None
    pod_timeout_s: float = 60.0
    hmac_secret: str | None = None
    runpod_endpoint_url: str | None = None
    runpod_api_key: str | None = None
    serverless_timeout_s: float = 120.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientConfig:
        env = os.environ if env is None else env
        backend = env.get("CLIP_INFERENCE_BACKEND", "").strip().lower() or "runpod_pod"
        if backend not in BACKENDS:
            raise ClipConfigError(f"CLIP_INFERENCE_BACKEND={backend!r} is not one of {', '.join(BACKENDS)}")
        return cls(
            backend=backend,
            pod_base_url=_url(env, "CLIP_POD_BASE_URL", "https://<pod-id>-8000.proxy.runpod.net"),
            pod_timeout_s=_positive_float(env, "CLIP_POD_TIMEOUT_S", 60.0),
            hmac_secret=first_secret(env.get("EMBEDDING_HMAC_SECRET")),
            runpod_endpoint_url=_url(env, "RUNPOD_ENDPOINT_URL", "https://api.runpod.ai/v2/<endpoint-id>"),
            runpod_api_key=env.get("RUNPOD_API_KEY", "").strip() or None,
            serverless_timeout_s=_positive_float(env, "CLIP_SERVERLESS_TIMEOUT_S", 120.0),
        )

    def require(self, *names: str) -> None:
        """Raise ClipConfigError naming every required setting that is missing."""
        env_names = {
            "pod_base_url": "CLIP_POD_BASE_URL",
            "hmac_secret": "EMBEDDING_HMAC_SECRET",
            "runpod_endpoint_url": "RUNPOD_ENDPOINT_URL",
            "runpod_api_key": "RUNPOD_API_KEY",
        }
        missing = [env_names[n] for n in names if not getattr(self, n)]
        if missing:
            raise ClipConfigError(
                f"CLIP_INFERENCE_BACKEND={self.backend} needs {', '.join(missing)} to be set in the environment"
            )
