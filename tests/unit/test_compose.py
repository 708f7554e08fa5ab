"""compose.yaml (and its GPU overlay), checked without a Docker engine: every variable is a real
setting with a valid value, the health check probes a route the app has, the pod waits for its Redis."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from starlette.routing import Match

from app.main import create_app
from app.settings import EXTRA_VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[2]
FILES = ["compose.yaml", "compose.gpu.yaml"]
# Compose's interpolation: ${NAME}, ${NAME:-default}, ${NAME:?error}.
_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")
KNOWN = {name.upper() for name in Settings.model_fields} | {v.name for v in EXTRA_VARIABLES}


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))


def _pod_environment(*files: str) -> dict[str, str]:
    """Return the pod's environment as compose merges the files, each ${...} at its default."""
    merged: dict[str, str] = {}
    for name in files:
        merged |= {k: str(v) for k, v in _load(name)["services"]["pod"].get("environment", {}).items()}
    return {k: _VARIABLE.sub(_default, v) for k, v in merged.items()}


def _default(match: re.Match[str]) -> str:
    name, kind, word = match.groups()
    if kind == "?":  # required: the caller sets it (a secret long enough to pass the start-up check)
        return "s" * 64 if name == "EMBEDDING_HMAC_SECRET" else "set"
    return word if kind == "-" else ""


def test_compose_default_skips_the_required_secret():
    assert _VARIABLE.sub(_default, "${WORKERS:-2}/${X}/${EMBEDDING_HMAC_SECRET:?say}") == "2//" + "s" * 64


@pytest.mark.parametrize("name", FILES)
def test_compose_pod_variables_are_settings(name):
    environment = _load(name)["services"]["pod"]["environment"]
    assert sorted(set(environment) - KNOWN) == []


@pytest.mark.parametrize("files", [FILES[:1], FILES], ids=["cpu", "gpu"])
def test_compose_pod_environment_is_a_valid_configuration(files, monkeypatch):
    environment = _pod_environment(*files)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # raises, saying what to fix, on a value the service would refuse at start-up
    assert settings.workers == 2 and settings.state_url is not None
    assert settings.device == ("cuda" if "compose.gpu.yaml" in files else "cpu")


def test_compose_pod_shares_state_with_the_redis_service_it_waits_for():
    services = _load("compose.yaml")["services"]
    state_url = _pod_environment("compose.yaml")["STATE_URL"]
    host = re.fullmatch(r"redis://([\w-]+):6379/\d+", state_url).group(1)
    assert host in services and "healthcheck" in services[host]
    assert services["pod"]["depends_on"] == {host: {"condition": "service_healthy"}}


def test_compose_pod_healthcheck_probes_a_route_of_the_app():
    # tests/e2e/test_compose_healthcheck.py runs the same command against a live service.
    test = _load("compose.yaml")["services"]["pod"]["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "app.ops.probe"]
    assert importlib.util.find_spec(test[3]) is not None
    app = create_app(Settings(embedding_hmac_secret="s" * 64, clip_pretrained="none", device="cpu"))
    scope = {"type": "http", "method": "GET", "path": test[4], "root_path": ""}
    assert [r for r in app.router.routes if r.matches(scope)[0] == Match.FULL] != []


def test_compose_pod_port_and_stop_grace_match_the_settings():
    pod = _load("compose.yaml")["services"]["pod"]
    defaults = Settings(embedding_hmac_secret="s" * 64)
    assert [p.rsplit(":", 1)[1] for p in pod["ports"]] == [str(defaults.port)]
    # SIGTERM drains for up to SHUTDOWN_GRACE_S; compose must wait longer before it kills.
    assert int(pod["stop_grace_period"].removesuffix("s")) > defaults.shutdown_grace_s


def test_compose_gpu_overlay_reserves_the_gpus():
    pod = _load("compose.gpu.yaml")["services"]["pod"]
    (device,) = pod["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
