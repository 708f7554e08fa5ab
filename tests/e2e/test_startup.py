"""Start-up as an operator runs it: `python -m app` with a model that cannot load."""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from scripts.procs import free_port


@pytest.mark.parametrize(
    ("model", "pretrained", "expected"),
    [
        ("ViT-B-32", "laion2b_s34b_b79k", "could not load weights 'laion2b_s34b_b79k'"),
        ("ViT-B-32", "no_such_tag", "is not a pretrained tag of ViT-B-32"),
        ("clip-tiny", "/nonexistent/weights.pt", "no such file exists"),
        ("no-such-model", "none", "is not an open_clip model"),
    ],
)
def test_server_exits_with_clear_message_when_model_cannot_load(model, pretrained, expected):
    env = os.environ | {
        "EMBEDDING_HMAC_SECRET": "s",
        "CLIP_MODEL": model,
        "CLIP_PRETRAINED": pretrained,
        "DEVICE": "cpu",
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "HF_HUB_OFFLINE": "1",  # what a machine without network sees, without waiting for retries
    }
    proc = subprocess.run(
        [sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert expected in proc.stderr
    assert "local checkpoint" in proc.stderr or "open_clip model" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [("DEVICE", "tpu", "DEVICE must be auto, cpu, cuda"), ("MAX_BATCH_SIZE", "0", "max_batch_size")],
)
def test_server_refuses_bad_setting_with_message(name, value, expected):
    env = os.environ | {"EMBEDDING_HMAC_SECRET": "s", name: value}
    proc = subprocess.run(
        [sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr


def _torch_bundles_libgomp() -> bool:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return False
    return bool(glob.glob(os.path.join(os.path.dirname(spec.origin), "lib", "libgomp*")))


@pytest.mark.skipif(not _torch_bundles_libgomp(), reason="this torch build does not use GNU OpenMP")
@pytest.mark.parametrize(("given", "expected"), [(None, "10000"), ("777", "777")])
def test_server_sets_openmp_spin_count_before_torch_loads(given, expected):
    # libgomp prints the settings it read at load with OMP_DISPLAY_ENV=verbose: what it saw, not os.environ.
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"} | {"OMP_DISPLAY_ENV": "verbose"}
    if given is not None:
        env["GOMP_SPINCOUNT"] = given
    # app.__main__ sets it on import; the app (and torch) load after it, as in `python -m app`.
    command = [sys.executable, "-c", "import app.__main__, app.main"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"GOMP_SPINCOUNT = '{expected}'" in proc.stderr
