"""The tools around several models: the pod image's bake command loads every model of MODELS, the signing CLI
covers the options a request sends, and the client CLI passes --model and --embedding-type on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from clip_client.signing import canonical_message, options_payload_id, signature_matches, text_payload_id

from app.auth.sign import main as sign
from scripts.procs import PYTHONPATH, ROOT

SECRET = "models-tools-secret-0123456789abcdef"


def _bake_command() -> str:
    """Return the Python the pod image runs to bake the weights (Dockerfile.pod's RUN ... python -c "...")."""
    text = re.sub(r"\\\n", "", (ROOT / "Dockerfile.pod").read_text())
    return re.search(r'python -c\s+"([^"]*load_every[^"]*)"', text).group(1)


def _bake(models: list[dict[str, object]]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"CLIP_MODEL", "CLIP_PRETRAINED"}}
    env |= {"PYTHONPATH": PYTHONPATH, "ALLOW_INSECURE_AUTH": "1", "DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    env["MODELS"] = json.dumps(models)
    command = [sys.executable, "-c", _bake_command()]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_pod_image_bakes_every_model_of_models():
    good = {"model": "clip-tiny", "pretrained": "none"}
    baked = _bake([good | {"name": "one"}, good | {"name": "two", "towers": "text"}])
    # The second entry is loaded too: one that cannot load fails the build.
    broken = _bake([good, {"model": "no-such-model", "pretrained": "none"}])
    assert baked.returncode == 0, baked.stderr[-2000:]
    assert broken.returncode == 1 and "'no-such-model' is not an open_clip model" in broken.stderr


@pytest.mark.parametrize(
    ("flags", "options"),
    [
        ([], {}),
        (["--model", "siglip2"], {"model": "siglip2"}),
        (["--embedding-type", "int8", "--dimensions", "256"], {"embedding_type": "int8", "dimensions": 256}),
    ],
)
def test_sign_cli_covers_the_options_a_request_sends(monkeypatch, capsys, flags, options):
    monkeypatch.setenv("EMBEDDING_HMAC_SECRET", SECRET)
    assert sign(["POST", "/v1/embed/text", "--text", "a cat", *flags, "--json"]) == 0
    headers = json.loads(capsys.readouterr().out)
    payload_id = options_payload_id(text_payload_id("a cat"), options)
    message = canonical_message("POST", "/v1/embed/text", payload_id, headers["X-Timestamp"])
    assert signature_matches(SECRET, message, headers["X-Signature"])


def test_sign_cli_refuses_options_beside_a_whole_body(monkeypatch, capsys):
    monkeypatch.setenv("EMBEDDING_HMAC_SECRET", SECRET)
    assert sign(["POST", "/v1/embeddings", "--body", "{}", "--model", "x"]) == 2
    assert "put the options in --body" in capsys.readouterr().err
