"""A real local Ray cluster on 127.0.0.1 running deploy/ray/serve-cpu.yaml, for the Ray tests and bench.

One cluster per test module (starting Ray takes seconds and memory), its nodes set as app.serve.node says
(HAProxy in front of the replicas' own HTTP servers); the application deployed from the CPU config, as
`serve run deploy/ray/serve-cpu.yaml` does, with the test's settings added; which replica answered a
request, read from the replicas' own logs.
"""

from __future__ import annotations

import copy
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import ray
import yaml
from ray import serve
from ray.serve._private.constants import SERVE_CONTROLLER_NAME
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from app.serve.deployment import DEPLOYMENT_NAME
from app.serve.node import ROOT, node_env
from scripts.procs import free_port

APP_NAME = "clip"
T = TypeVar("T")
CPU_CONFIG = ROOT / "deploy" / "ray" / "serve-cpu.yaml"
# Ray's own switches for the processes it starts, besides every node's (app.serve.node): nothing leaves the
# machine, metrics reach the autoscaler quickly, a removed replica waits 2 s (not 30) for HAProxy to drop it
# before closing its port (HAProxy here learns it within a second), and this venv's Python runs
# deploy/ray/haproxy, as an activated venv's would.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
}
WAIT_S = float(os.environ.get("WAITS", "120"))


@dataclass(frozen=True, slots=True)
class Cluster:
    """The running cluster: Serve's HTTP address (the ingress), the config it runs, the replicas' log folder."""

    base: str
    config: dict
    serve_logs: Path


def private_ports_and_files(folder: Path) -> dict[str, str]:
    """Return HAProxy's files (in `folder`: a short path, for HAProxy's sockets) and ports, and the fallback
    proxy's port, private to one cluster (Ray's defaults are fixed: /tmp/haproxy-serve, 8404, 8500...)."""
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
    }


def cpu_config(app_env: Mapping[str, str], port: int) -> dict:
    """Return deploy/ray/serve-cpu.yaml on `port`, with `app_env` added to the replicas' environment."""
    config = yaml.safe_load(CPU_CONFIG.read_text())
    config["http_options"]["port"] = port
    config["applications"][0]["runtime_env"]["env_vars"] |= dict(app_env)
    return config


@contextmanager
def local_cluster(
    app_env: Mapping[str, str], temp_dir: Path, num_cpus: int = 2, ray_env: Mapping[str, str] | None = None
) -> Iterator[Cluster]:
    """Start Ray (dashboard off) and Serve's ingress on 127.0.0.1 as the CPU config says; stop both after.

    `app_env` goes to the replicas; `ray_env` to Ray's own processes, over every node's (another ingress)."""
    haproxy_files = tempfile.TemporaryDirectory(prefix="haproxy-")
    env = node_env() | RAY_ENV | private_ports_and_files(Path(haproxy_files.name)) | dict(ray_env or {})
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # inherited by every process Ray starts, the ingress included
    try:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=str(temp_dir),
        )
        try:
            config = cpu_config(app_env, free_port())
            serve.start(http_options=config["http_options"], proxy_location=config["proxy_location"])
            logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
            yield Cluster(f"http://127.0.0.1:{config['http_options']['port']}", config, logs)
        finally:
            serve.shutdown()
            ray.shutdown()
    finally:
        haproxy_files.cleanup()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def deploy(cluster: Cluster, **options: object) -> None:
    """Deploy the cluster's config as `serve deploy` would, the deployment's `options` replaced (null, as in
    YAML: `autoscaling_config=None` fixes the count at `num_replicas`), `import_path` the application's;
    return once it runs with as many replicas as asked (`num_replicas`, or the autoscaler's minimum)."""
    config = copy.deepcopy(cluster.config)
    (app,) = config["applications"]
    (deployment,) = app["deployments"]
    app["import_path"] = options.pop("import_path", app["import_path"])
    deployment.update(options)
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
    wanted = deployment.get("num_replicas") or deployment["autoscaling_config"]["min_replicas"]
    until(lambda: _settled_at(wanted), f"the application running {wanted} replica(s)", WAIT_S)
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        # Serve tells HAProxy a moment later (and until then the head's Python proxy answers for it).
        until(lambda: haproxy_replicas_up() == len(replica_bases()), "HAProxy sending to every replica", WAIT_S)


def haproxy_replicas_up() -> int:
    """Return how many replicas this node's HAProxy has in its backend and sees up (its admin socket)."""
    (sock_path,) = Path(os.environ["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent.glob("*/admin.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(sock_path))
        sock.sendall(b"show stat\n")
        header, *rows = b"".join(iter(lambda: sock.recv(65536), b"")).decode().lstrip("# ").splitlines()
    servers = [dict(zip(header.split(","), row.split(","), strict=False)) for row in rows if row]
    return sum(1 for s in servers if s["svname"].startswith("SERVE_REPLICA") and s["status"] == "UP")


def _settled_at(replicas: int) -> bool:
    application = serve.status().applications.get(APP_NAME)
    if application is not None and application.status == "DEPLOY_FAILED":
        raise AssertionError(f"the deployment failed: {application.message}")
    return application is not None and application.status == "RUNNING" and replica_states() == {"RUNNING": replicas}


def replica_bases() -> list[str]:
    """Return the base URLs of the replicas' own HTTP servers (what HAProxy routes to).

    Serve names each target by its node's address; the replicas of this cluster listen on 127.0.0.1."""
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace="serve")
    groups = ray.get(controller.get_target_groups.remote(APP_NAME, from_proxy_manager=True))
    return sorted(f"http://127.0.0.1:{t.port}" for g in groups if g.protocol == "HTTP" for t in g.targets)


def replica_names() -> set[str]:
    """Return the Ray actor names of the deployment's live replicas."""
    prefix = f"SERVE_REPLICA::{APP_NAME}#{DEPLOYMENT_NAME}#"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


def replica_states() -> dict[str, int]:
    """Return how many replicas Serve reports in each state (RUNNING, STARTING, STOPPING...)."""
    application = serve.status().applications.get(APP_NAME)
    if application is None or DEPLOYMENT_NAME not in application.deployments:
        return {}
    status = application.deployments[DEPLOYMENT_NAME]
    return {str(state): int(count) for state, count in status.replica_states.items() if count}


def app_log_lines(cluster: Cluster, text: str) -> list[str]:
    """Return the lines of the replicas' own logs (their stderr, where the app logs) that contain `text`."""
    found = []
    for log in cluster.serve_logs.parent.glob("worker-*.err"):
        found += [line for line in log.read_text(errors="replace").splitlines() if text in line]
    return found


def run_in_replica(name: str, function: Callable[[], T]) -> T:
    """Call `function` in the process of the replica whose actor is `name`; return its result."""
    return ray.get(ray.get_actor(name, namespace="serve").__ray_call__.remote(lambda _: function()))


def kill_replica(name: str) -> None:
    """Kill one replica's actor as a crash would (Serve starts another); return once its process is gone."""
    pid = run_in_replica(name, os.getpid)
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    until(lambda: not _alive(pid), f"the end of {name}'s process", WAIT_S)


def _alive(pid: int) -> bool:
    try:  # a killed process is a zombie until the raylet reaps it: its sockets are closed already
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def replica_of(cluster: Cluster, request_id: str, timeout_s: float = 30) -> str:
    """Return which replica answered `request_id` (X-Request-ID): the worker whose log holds the app's line for it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for log in cluster.serve_logs.parent.glob("worker-*.err"):
            if request_id in log.read_text(errors="replace"):
                return log.stem
        time.sleep(0.1)
    raise AssertionError(f"no replica logged request {request_id}")


def until(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    """Return once `check()` is true; fail, saying `what` never happened, after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.2)
