"""deploy/ray/serve.yaml against Ray Serve's own schema, strictly: a misspelt key fails, not just a bad value."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

schema = pytest.importorskip("ray.serve.schema", reason="Ray is installed by requirements-ray.txt")

AutoscalingConfig = pytest.importorskip("ray.serve.config").AutoscalingConfig
CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "ray" / "serve.yaml"


def load() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def validate(config: dict) -> None:
    """Validate as `serve deploy` does, and refuse keys the schema does not know (Serve ignores them).

    The schema takes `autoscaling_config` as any mapping and checks it only once deployed: check it here
    with the model Serve then builds from it."""
    schema.ServeDeploySchema.model_validate(config, extra="forbid")
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            if "autoscaling_config" in deployment:
                AutoscalingConfig.model_validate(deployment["autoscaling_config"], extra="forbid")


def test_ray_config_is_a_valid_serve_config():
    validate(load())


def test_ray_config_matches_the_deployment_defaults():
    from app.serve.deployment import AUTOSCALING, DEPLOYMENT_NAME, MAX_ONGOING_REQUESTS, RAY_ACTOR_OPTIONS

    (app,) = load()["applications"]
    (deployment,) = app["deployments"]
    assert app["import_path"] == "app.serve.deployment:app"
    assert deployment["name"] == DEPLOYMENT_NAME
    assert deployment["ray_actor_options"] == RAY_ACTOR_OPTIONS
    assert deployment["max_ongoing_requests"] == MAX_ONGOING_REQUESTS
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
    config = copy.deepcopy(load())
    node = config
    for step in path:
        node = node[step]
    node[key] = value
    with pytest.raises(ValidationError):
        validate(config)
