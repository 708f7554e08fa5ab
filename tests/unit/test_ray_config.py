"""deploy/ray's Serve configs against Ray Serve's own schema, strictly (a misspelt key fails, not just a bad
value), and against each other: the CPU config and the KubeRay manifest are the GPU config where they say."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

schema = pytest.importorskip("ray.serve.schema", reason="Ray is installed by requirements-ray.txt")

AutoscalingConfig = pytest.importorskip("ray.serve.config").AutoscalingConfig
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "ray" / "serve.yaml"
CPU_CONFIG = ROOT / "deploy" / "ray" / "serve-cpu.yaml"
RAYSERVICE = ROOT / "deploy" / "ray" / "rayservice.yaml"
NETWORK_POLICY = ROOT / "deploy" / "ray" / "networkpolicy.yaml"
SCALING_OUT = ROOT / "docs" / "scaling-out.md"
# Where the laptop's config departs from the GPU cluster's, and nowhere else.
CPU_DIFFERENCES = {
    ("http_options", "host"): "127.0.0.1",
    ("applications", 0, "runtime_env", "env_vars", "CLIP_PRETRAINED"): "none",
    ("applications", 0, "runtime_env", "env_vars", "DEVICE"): "cpu",
    ("applications", 0, "runtime_env", "env_vars", "CPU_WORKERS"): "1",
    ("applications", 0, "runtime_env", "env_vars", "REQUIRE_NONCE"): None,
    ("applications", 0, "deployments", 0, "ray_actor_options", "num_gpus"): 0,
    ("applications", 0, "deployments", 0, "ray_actor_options", "num_cpus"): 1,
    ("applications", 0, "deployments", 0, "autoscaling_config", "max_replicas"): 2,
}


def load(path: Path = CONFIG) -> dict:
    return yaml.safe_load(path.read_text())


def validate(config: dict) -> None:
    """Validate as `serve deploy` does, and refuse keys the schema does not know (Serve ignores them).

    The schema takes `autoscaling_config` as any mapping and checks it only once deployed: check it here
    with the model Serve then builds from it."""
    schema.ServeDeploySchema.model_validate(config, extra="forbid")
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            if "autoscaling_config" in deployment:
                AutoscalingConfig.model_validate(deployment["autoscaling_config"], extra="forbid")


@pytest.mark.parametrize("path", [CONFIG, CPU_CONFIG], ids=["gpu", "cpu"])
def test_ray_config_is_a_valid_serve_config(path):
    validate(load(path))


def test_ray_cpu_config_is_the_gpu_config_but_where_it_says():
    config = load(CONFIG)
    for path, value in CPU_DIFFERENCES.items():
        *parents, key = path
        node = config
        for step in parents:
            node = node[step]
        if value is None:
            del node[key]
        else:
            node[key] = value
    assert load(CPU_CONFIG) == config


def _manifests(path: Path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


def test_ray_kuberay_manifest_serves_the_gpu_config():
    (service,) = _manifests(RAYSERVICE)
    assert service["kind"] == "RayService"
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == load(CONFIG)


def _containers(service: dict) -> list[dict]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


def test_ray_kuberay_manifest_sets_every_nodes_environment():
    from app.serve.node import node_env

    (service,) = _manifests(RAYSERVICE)
    expected = node_env(Path("/srv"))  # the image's repository (Dockerfile.pod's WORKDIR)
    containers = _containers(service)
    assert len(containers) == 2
    for container in containers:
        assert {e["name"]: e["value"] for e in container["env"]} == expected
        assert container["envFrom"] == [{"secretRef": {"name": "clip-secrets"}}]


def test_ray_docs_list_every_nodes_environment():
    from app.serve.node import node_env

    section = SCALING_OUT.read_text().split("## Every node's environment", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", section, flags=re.MULTILINE)
    assert dict(rows) == node_env(Path("<repository>"))


def test_ray_network_policy_opens_only_haproxy_to_clients():
    (service,) = _manifests(RAYSERVICE)
    (policy,) = _manifests(NETWORK_POLICY)
    cluster = service["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert group["template"]["metadata"]["labels"].items() >= policy["spec"]["podSelector"]["matchLabels"].items()
    open_to_all = [rule for rule in policy["spec"]["ingress"] if "from" not in rule]
    assert open_to_all == [{"ports": [{"protocol": "TCP", "port": load(CONFIG)["http_options"]["port"]}]}]


def test_ray_config_matches_the_deployment_defaults():
    from app.serve.deployment import (
        AUTOSCALING,
        DEPLOYMENT_NAME,
        LOGGING_CONFIG,
        MAX_ONGOING_REQUESTS,
        RAY_ACTOR_OPTIONS,
    )

    (app,) = load(CONFIG)["applications"]
    (deployment,) = app["deployments"]
    assert app["import_path"] == "app.serve.deployment:app"
    assert deployment["name"] == DEPLOYMENT_NAME
    assert deployment["ray_actor_options"] == RAY_ACTOR_OPTIONS
    assert deployment["max_ongoing_requests"] == MAX_ONGOING_REQUESTS
    assert deployment["logging_config"] == LOGGING_CONFIG
    for key, value in deployment["autoscaling_config"].items():
        assert getattr(AUTOSCALING, key) == value, key


@pytest.mark.parametrize(
    ("path", "key", "value"),
    [
        (("applications", 0, "deployments", 0, "autoscaling_config"), "target_ongoing_request", 16),
        (("applications", 0, "deployments", 0, "ray_actor_options"), "num_gpu", 1),
        (("applications", 0, "deployments", 0), "max_ongoing_request", 64),
        (("applications", 0), "import_paths", "app.serve.deployment:app"),
        (("http_options",), "prot", 8000),
        ((), "aplications", []),
        (("applications", 0, "deployments", 0, "autoscaling_config"), "min_replicas", -1),
    ],
)
def test_ray_config_with_a_typo_fails(path, key, value):
    config = copy.deepcopy(load(CONFIG))
    node = config
    for step in path:
        node = node[step]
    node[key] = value
    with pytest.raises(ValidationError):
        validate(config)
