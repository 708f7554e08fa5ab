"""`python -m bench.load` as a sweep, against the test service: a table row per point, and the PNG."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from bench import load
from tests.support.api import SECRET

ROOT = Path(__file__).resolve().parents[2]


def _bench_load(base: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bench.load", "--server", base, "--kind", "text", "--duration", "1", *args]
    env = os.environ | {"EMBEDDING_HMAC_SECRET": SECRET}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_bench_load_sweep_prints_each_point_and_draws_it(service, tmp_path):
    plot = tmp_path / "captions.png"
    run = _bench_load(service.base, "-c", "1,2", "--plot", str(plot))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["clients", "batch", "items/s", "p50", "ms", "p99", "ms", "errors"]
    assert [line.split()[:2] for line in lines[1:3]] == [["1", "1"], ["2", "1"]]
    assert [line.split()[-1] for line in lines[1:3]] == ["0", "0"]  # no errors
    assert lines[3] == f"plot: {plot}"
    with Image.open(plot) as image:
        assert (image.format, image.size) == ("PNG", (840, 340))


def test_bench_load_single_point_json_is_one_object(service):
    run = _bench_load(service.base, "-c", "2", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert (result["clients"], result["batch"], result["errors"]) == (2, 1, {})
    assert result["requests"] > 0


def test_bench_load_plot_needs_a_sweep(service, tmp_path):
    run = _bench_load(service.base, "-c", "2", "--plot", str(tmp_path / "x.png"))
    assert (run.returncode, run.stderr.strip()) == (1, "--plot draws a sweep: give -c or -b several values")
    assert not (tmp_path / "x.png").exists()


def test_bench_load_names_the_served_model_in_the_plot_title(service):
    assert load.describe_server(service.base) == "clip-tiny (random weights) on cpu"
    assert load.describe_server("http://127.0.0.1:9") == "http://127.0.0.1:9"  # nothing listens: the URL
