"""The environment every Ray node of the service sets before `ray start`: the ingress, chosen by measurement.

Serve reads these switches when its own processes start (controller, ingress, replicas), so they belong to
each node's environment (`ray start`'s, the RayService's containers), not to deploy/ray/serve.yaml, whose
`runtime_env` reaches the replicas only. Why HAProxy: docs/scaling-out.md#choosing-the-ingress.
`python -m app.serve.node` prints them as KEY=VALUE lines for this checkout, for `export $(...)`.
tests/unit/test_ray_config.py checks that deploy/ray/rayservice.yaml and the docs set the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def node_env(root: Path = ROOT) -> dict[str, str]:
    """Return every node's variables, for the repository at `root` (the image's /srv on KubeRay)."""
    return {
        # HAProxy on every node, in front of the replicas' own HTTP servers, instead of Serve's Python proxy.
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # HAProxy's answer when no replica answered is the service's retryable 503 (app/serve/haproxy.py).
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(root / "deploy" / "ray" / "haproxy"),
        # Each replica runs the app on the event loop that serves its HTTP port, not on a second thread that
        # every request and answer would cross: the app never blocks its loop (the model loads and runs on
        # threads of its own). 7% less replica CPU per caption; 15% with Serve's access log off (serve.yaml).
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        # A replica silent past Serve's request_timeout_s (90 s in serve.yaml) is given up on: 503, retryable.
        "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": "95",
        # The head's Python proxy, HAProxy's fallback while no replica is up, answers a lost request so too.
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "app.serve.proxy:middlewares",
    }


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    print("\n".join(f"{name}={value}" for name, value in node_env(root).items()))
