"""Start-up as an operator runs it: `python -m app` with a model that cannot load, a port in use, no room
for the pod's metrics; each one exits with the code README.pod.md gives, and a message that says what to change."""

from __future__ import annotations

import glob
import importlib.util
import os
import socket
import subprocess
import sys

import pytest

from scripts.procs import PYTHONPATH, ROOT, free_port
from tests.support.pod import redis_or_skip
from tests.support.redis import RedisServer

# No Redis answers there: these pods stop before they need one.
NO_REDIS = "redis://127.0.0.1:1/0"


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


def _run_app(env: dict[str, str], *, file_size_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m app` to its end with `env` added; under a file-size limit (RLIMIT_FSIZE) when given."""
    command = [sys.executable, "-m", "app"]
    if file_size_limit is not None:
        # A write past the limit fails (EFBIG) as a write to a full disk fails (ENOSPC): no root needed.
        limit = f"resource.setrlimit(resource.RLIMIT_FSIZE, ({file_size_limit}, {file_size_limit}))"
        run = "runpy.run_module('app', run_name='__main__', alter_sys=True)"
        command = [sys.executable, "-c", f"import resource, runpy; {limit}; {run}"]
    full_env = os.environ | {
        "PYTHONPATH": PYTHONPATH,
        "PYTHONDONTWRITEBYTECODE": "1",
        "EMBEDDING_HMAC_SECRET": "s",
        "CLIP_MODEL": "clip-tiny",
        "CLIP_PRETRAINED": "none",
        "DEVICE": "cpu",
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        command, cwd=ROOT, env=full_env | env, capture_output=True, text=True, timeout=120, check=False
    )


def test_pod_exits_1_with_clear_message_when_the_model_cannot_load():
    proc = _run_app({"WORKERS": "2", "STATE_URL": NO_REDIS, "CLIP_PRETRAINED": "/nonexistent/weights.pt"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "no such file exists" in proc.stderr and "Traceback" not in proc.stderr


# With a live STATE_URL, one process used to hang here for good, SIGTERM included: its shutdown waited,
# without a bound, for the store's watcher, whose cancellation redis-py's waits swallow on Python 3.11.
@pytest.mark.parametrize("workers", ["1", "2"])
def test_server_exits_3_naming_the_port_when_another_process_listens_there(workers, tmp_path):
    with RedisServer(redis_or_skip(), tmp_path) as store, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run_app({"WORKERS": workers, "STATE_URL": store.url, "PORT": str(port)})
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}: another process listens there" in proc.stderr
    # Stopped before any app starts, let alone a model load.
    assert "Traceback" not in proc.stderr and "application startup" not in proc.stderr


# The pod's workers write their metrics through mmap into TMPDIR: on a full disk they died of SIGBUS in a loop.
@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (0, "no usable temporary folder for the pod's metrics"),  # not even tempfile's own 4-byte probe fits
        (32 * 1024, "has no room for the metrics of 2 workers (4 MiB)"),
    ],
    ids=["no-temp-folder", "full"],
)
def test_pod_exits_2_when_the_temporary_folder_cannot_hold_its_metrics(limit, expected):
    proc = _run_app({"WORKERS": "2", "STATE_URL": NO_REDIS}, file_size_limit=limit)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in proc.stderr and "TMPDIR" in proc.stderr and "Traceback" not in proc.stderr


def test_server_refuses_a_state_url_that_is_not_redis_without_quoting_it():
    proc = _run_app({"STATE_URL": "http://user:hunter2@cache:6379"})
    assert proc.returncode == 2
    assert "STATE_URL must start with redis://" in proc.stderr and "hunter2" not in proc.stderr
