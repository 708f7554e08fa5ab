"""A real local Ray cluster on 127.0.0.1 with Serve's HTTP proxy, for tests/e2e/test_ray_serve.py.

One cluster per test module (starting Ray takes seconds and memory); deployments of app.serve.deployment
on it with CPU-only replicas; which replica answered a request, read from Serve's replica logs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import serve

from app.serve.deployment import DEPLOYMENT_NAME, deployment
from scripts.procs import free_port

APP_NAME = "clip"
# Ray's own switches for the processes it starts: nothing leaves the machine, metrics reach the autoscaler
# quickly, and every proxy answers a request whose replica died with the service's 503.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "app.serve.proxy:middlewares",
}
# A replica takes half a logical CPU, so that two replicas, the proxy and the controller fit in two.
REPLICA_OPTIONS = {"num_cpus": 0.5, "num_gpus": 0}


@dataclass(frozen=True, slots=True)
class Cluster:
    """The running cluster: Serve's HTTP address and where Ray writes the replicas' logs."""

    base: str
    serve_logs: Path


@contextmanager
def local_cluster(app_env: Mapping[str, str], temp_dir: Path, num_cpus: int = 2) -> Iterator[Cluster]:
    """Start Ray (dashboard off) and Serve's proxy on 127.0.0.1; replicas read `app_env`; stop both after."""
    saved = {name: os.environ.get(name) for name in RAY_ENV}
    os.environ.update(RAY_ENV)  # inherited by every process Ray starts, the proxy included
    try:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": dict(app_env)},
            _node_ip_address="127.0.0.1",
            _temp_dir=str(temp_dir),
        )
        try:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
            yield Cluster(f"http://127.0.0.1:{port}", logs)
        finally:
            serve.shutdown()
            ray.shutdown()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def deploy(*init_args: object, **options: object) -> None:
    """Run the service's deployment with `options` on CPU replicas; return once every replica is healthy.

    `init_args` go to each replica's constructor (the model seam: `embedder_factory`)."""
    app = deployment.options(ray_actor_options=REPLICA_OPTIONS, **options).bind(*init_args)  # type: ignore[arg-type]
    serve.run(app, name=APP_NAME, route_prefix="/")


def replica_names() -> set[str]:
    """Return the Ray actor names of the deployment's live replicas."""
    prefix = f"SERVE_REPLICA::{APP_NAME}#{DEPLOYMENT_NAME}#"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


def replica_states() -> dict[str, int]:
    """Return how many replicas Serve reports in each state (RUNNING, STARTING, STOPPING...)."""
    status = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
    return {str(state): int(count) for state, count in status.replica_states.items() if count}


def app_log_lines(cluster: Cluster, text: str) -> list[str]:
    """Return the lines of the replicas' own logs (their stderr, where the app logs) that contain `text`."""
    found = []
    for log in cluster.serve_logs.parent.glob("worker-*.err"):
        found += [line for line in log.read_text(errors="replace").splitlines() if text in line]
    return found


def kill_replica(name: str) -> None:
    """Kill one replica's actor at once, as a crash would (Serve starts another)."""
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


def replica_of(cluster: Cluster, request_id: str, timeout_s: float = 30) -> str:
    """Return the id of the replica that answered `request_id` (X-Request-ID), from Serve's access logs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for log in cluster.serve_logs.glob(f"replica_{APP_NAME}_{DEPLOYMENT_NAME}_*.log"):
            if request_id in log.read_text(errors="replace"):
                return log.stem.rsplit("_", 1)[-1]
        time.sleep(0.1)
    raise AssertionError(f"no replica logged request {request_id}")


def until(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    """Return once `check()` is true; fail, saying `what` never happened, after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.2)
