"""`python -m clip_client`: JSON on stdout, exit status 0 / 1 (failed) / 2 (usage, configuration)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clip_client.__main__ import main

from tests.support.api import SECRET

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(service, monkeypatch, capsys):
    """Run the CLI in-process against the real service; return (exit status, printed JSON)."""
    for name in ("CLIP_INFERENCE_BACKEND", "CLIP_POD_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLIP_POD_BASE_URL", service.base)
    monkeypatch.setenv("EMBEDDING_HMAC_SECRET", SECRET)

    def run(*argv: str) -> tuple[int, dict]:
        status = main(list(argv))
        return status, json.loads(capsys.readouterr().out)

    return run


def test_cli_health_prints_service_health(cli):
    status, out = cli("health")
    assert status == 0 and out["status"] == "ok" and out["model"] == "clip-tiny"


def test_cli_image_prints_embedding(cli, image_server):
    status, out = cli("image", image_server.url("img/photo2.jpg"))
    assert status == 0 and out["dim"] == 64 and len(out["embedding"]) == 64


def test_cli_text_prints_embedding(cli):
    status, out = cli("text", "a photo of a dog")
    assert status == 0 and out["dim"] == 64 and len(out["embedding"]) == 64


def test_cli_images_with_a_failure_exits_1_with_all_results(cli, image_server):
    urls = [image_server.url("img/photo0.jpg"), image_server.url("img/missing.jpg")]
    status, out = cli("images", *urls)
    assert status == 1 and out["succeeded"] == 1 and out["failed"] == 1
    assert [r["url"] for r in out["results"]] == urls
    assert out["results"][1]["error"]["code"] == "download_failed" and out["results"][1]["embedding"] is None


def test_cli_images_all_good_exits_0(cli, image_server):
    status, out = cli("images", image_server.url("img/photo0.jpg"), image_server.url("img/photo1.jpg"))
    assert status == 0 and out["succeeded"] == 2 and out["failed"] == 0


def test_cli_refused_request_exits_1_with_error(cli):
    status, out = cli("image", "ftp://example.com/cat.jpg")
    assert status == 1 and out["error"]["code"] == "invalid_url"


def test_cli_wrong_secret_exits_1_signature_mismatch_with_the_request_id_the_server_logged(
    cli, monkeypatch, image_server, caplog
):
    monkeypatch.setenv("EMBEDDING_HMAC_SECRET", "wrong")
    caplog.set_level(logging.WARNING, logger="app.auth.verify")
    status, out = cli("image", image_server.url("img/photo0.jpg"))
    (record,) = [r for r in caplog.records if r.name == "app.auth.verify"]
    error = out["error"]
    assert status == 1 and error["code"] == "signature_mismatch" and error["request_id"] == record.request_id
    assert "EMBEDDING_HMAC_SECRET" in error["hint"] and f"request_id {record.request_id}" in error["hint"]


def test_cli_missing_configuration_exits_2(cli, monkeypatch):
    monkeypatch.delenv("CLIP_POD_BASE_URL")
    status, out = cli("health")
    assert status == 2 and out["error"]["code"] == "config_error"
    assert "CLIP_POD_BASE_URL" in out["error"]["message"]


def _module_env(service) -> dict[str, str]:
    """The environment of `python -m clip_client` run against the test service."""
    return os.environ | {
        "PYTHONPATH": str(ROOT / "client"),
        "CLIP_POD_BASE_URL": service.base,
        "EMBEDDING_HMAC_SECRET": SECRET,
        "CLIP_INFERENCE_BACKEND": "runpod_pod",
    }


def test_cli_runs_as_module_in_subprocess(service):
    env = _module_env(service)
    done = subprocess.run(
        [sys.executable, "-m", "clip_client", "text", "hello"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["dim"] == 64


def test_cli_usage_error_exits_2():
    done = subprocess.run(
        [sys.executable, "-m", "clip_client", "embed"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        env=os.environ | {"PYTHONPATH": str(ROOT / "client")},
        check=False,
    )
    assert done.returncode == 2 and b"invalid choice" in done.stderr


def test_cli_output_to_a_closed_pipe_exits_quietly(service):
    env = _module_env(service)
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head` does once it has read enough: the CLI's print meets EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "clip_client", "text", "hello"],
            env=env,
            cwd=ROOT,
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0
    assert done.stderr == b""
