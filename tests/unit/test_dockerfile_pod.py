"""Dockerfile.pod, checked without a Docker engine: hadolint, and the properties the pod relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.pod"


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: `make install` (or pip install -r requirements-dev.txt -c constraints.txt)")
    return found


def _instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_dockerfile_pod_passes_hadolint():
    proc = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_dockerfile_pod_bases_are_pinned_and_cuda_matches_torch():
    bases = [args.split()[0] for word, args in _instructions() if word == "FROM"]
    assert bases == ["ghcr.io/astral-sh/uv:0.13.0", "nvidia/cuda:13.0.2-base-ubuntu22.04"]
    torch_pin = re.search(r"^torch==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE).group(1)
    assert f"torch.__version__.startswith('{torch_pin}')" in DOCKERFILE.read_text()
    assert "torch.version.cuda == '13.0'" in DOCKERFILE.read_text()  # the CUDA of that PyPI wheel and the base


def test_dockerfile_pod_runs_offline_as_non_root_with_healthcheck():
    instructions = _instructions()
    words = [word for word, _ in instructions]
    args = dict(instructions)  # the last of each kind
    assert args["USER"] == "10001:10001"
    first_env = next(a for w, a in instructions if w == "ENV")
    assert "DEVICE=cuda" in first_env.split()  # a pod without a usable GPU fails loudly, not on the CPU
    assert args["EXPOSE"] == "8000"
    assert args["CMD"] == '["python", "-m", "app"]'
    assert args["HEALTHCHECK"].endswith('CMD ["python", "-m", "app.ops.probe", "/health"]')
    build_args = [a.split("=")[0] for w, a in instructions if w == "ARG"]
    assert {"CLIP_MODEL", "CLIP_PRETRAINED"} <= set(build_args)
    # The weights are fetched by a RUN before HF_HUB_OFFLINE=1 is set, and nothing runs after it.
    fetch = next(i for i, (w, a) in enumerate(instructions) if w == "RUN" and "load_clip(Settings())" in a)
    offline = next(i for i, (w, a) in enumerate(instructions) if w == "ENV" and a == "HF_HUB_OFFLINE=1")
    assert fetch < offline and "RUN" not in words[offline:]
    assert any(w == "RUN" and 'uv venv --python "${PYTHON_VERSION}"' in a for w, a in instructions)
    assert re.search(r"ARG PYTHON_VERSION=3\.11\.\d+$", DOCKERFILE.read_text(), re.MULTILINE)


def test_make_docker_build_uses_dockerfile_pod():
    makefile = (ROOT / "Makefile").read_text()
    assert "docker-build:\n\tdocker build -f Dockerfile.pod -t $(IMAGE) $(DOCKER_BUILD_ARGS) .\n" in makefile
