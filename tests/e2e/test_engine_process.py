"""One engine process fed by every worker (ENGINE_PROCESS=on), as an operator runs it: `python -m app`, real
processes, the tiny model on the CPU, a real Redis.

Most tests run `tests.support.gated_model`, the real model whose image batches wait while a file exists,
so that a test can hold items inside the engine process for as long as it needs.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from clip_client.signing import batch_payload_id, signed_headers, text_payload_id

from scripts.procs import PYTHONPATH, ROOT, free_port
from tests.support.api import SECRET, call
from tests.support.data import TINY_APP_ENV, jpeg_bytes, tiny_settings
from tests.support.logs import json_log
from tests.support.metrics import scrape, value
from tests.support.photos import corrupt_scan, photo, photo_jpeg
from tests.support.pod import answered_by, health_until, pod, redis_or_skip, until
from tests.support.redis import RedisServer
from tests.support.served import signed_call
from tests.support.service import run_service

IMAGE_PATH = "/v1/embed/image"
BATCH_PATH = "/v1/embed/image-batch"
TEXT_PATH = "/v1/embed/text"
GATED = "tests.support.gated_model"
ON = {"ENGINE_PROCESS": "on"}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with RedisServer(redis_or_skip(), tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    """The file that holds the gated model's image batches while it exists (created here)."""
    path = tmp_path / "gate"
    path.touch()
    yield path
    path.unlink(missing_ok=True)


def data_uri(data: bytes, kind: str = "jpeg") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def png(width: int, height: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    photo(width, height, seed).save(buffer, "PNG")
    return buffer.getvalue()


def held(gate: Path) -> bool:
    """Say whether an image batch waits at the gate in the engine process."""
    return gate.with_suffix(".held").exists()


def engine_images(base: str) -> dict[str, int]:
    """Return the engine process's image queue as /health shows it (from its notice)."""
    return call(base, "/health")[1]["engine"]["images"]


def engine_pid(base: str) -> int:
    return int(call(base, "/health")[1]["pod"]["engines"][0]["pid"])


def post(conn: http.client.HTTPConnection, path: str, body: dict, payload_id: str, request_id: str) -> tuple[int, dict]:
    """POST a signed `body` on a kept-alive connection (so to the worker that holds it); return status and JSON."""
    headers = signed_headers(SECRET, "POST", path, payload_id) | {
        "Content-Type": "application/json",
        "X-Request-ID": request_id,
    }
    conn.request("POST", path, json.dumps(body), headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def connections_on_both_workers(base: str, log_path: Path) -> list[http.client.HTTPConnection]:
    """Return two kept-alive connections held by different workers."""
    address = urlsplit(base)
    found: dict[int, http.client.HTTPConnection] = {}
    for i in range(60):
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        text = f"which worker {i}"
        assert post(conn, TEXT_PATH, {"text": text}, text_payload_id(text), f"probe-{i}")[0] == 200
        pid = answered_by(log_path, f"probe-{i}")
        if pid in found:
            conn.close()
            continue
        found[pid] = conn
        if len(found) == 2:
            return list(found.values())
    pytest.fail("60 new connections all landed on one worker")


def test_engine_process_batches_the_items_of_both_workers_together(redis_url, gate, tmp_path):
    log_path = tmp_path / "server.log"
    with pod(log_path, redis_url, module=GATED, GATE_FILE=str(gate), **ON) as (_, base):
        conns = connections_on_both_workers(base, log_path)
        urls = [[data_uri(jpeg_bytes(96, 64, 10 * w + i)) for i in range(3)] for w in range(2)]
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(call, base, IMAGE_PATH, {"image_url": data_uri(jpeg_bytes(80, 60, 99))})
            until(lambda: held(gate), "the first image batch held in the engine")
            requests = [
                pool.submit(post, conn, BATCH_PATH, {"image_urls": u}, batch_payload_id(u), f"both-{w}")
                for w, (conn, u) in enumerate(zip(conns, urls, strict=True))
            ]
            until(lambda: engine_images(base)["queue_depth"] == 6, "both workers' images queued in the engine")
            gate.unlink()
            answers = [first.result(60)[0]] + [r.result(60)[0] for r in requests]
        until(lambda: engine_images(base)["batches"] == 2, "the engine's notice of its second batch")
        stats = engine_images(base)
        metrics = scrape(base)
    workers = {answered_by(log_path, f"both-{w}") for w in range(2)}
    assert (answers, len(workers)) == ([200, 200, 200], 2)
    # One forward pass of 6 images, 3 from each worker: the engine batched across the workers.
    assert (stats["batches"], stats["items"], stats["last_batch_size"]) == (2, 7, 6)
    assert value(metrics, "clip_batch_size_count", queue="images") == 2  # counted in the engine, summed pod-wide
    assert value(metrics, "clip_batch_size_sum", queue="images") == 7


def test_engine_process_killed_mid_request_answers_503_is_replaced_and_the_pod_serves_again(redis_url, gate, tmp_path):
    log_path = tmp_path / "server.log"
    with (
        pod(log_path, redis_url, module=GATED, GATE_FILE=str(gate), **ON) as (proc, base),
        ThreadPoolExecutor(1) as pool,
    ):
        victim = engine_pid(base)
        in_flight = pool.submit(call, base, IMAGE_PATH, {"image_url": data_uri(jpeg_bytes(80, 60, 1))})
        until(lambda: held(gate), "the image held in the engine")
        os.kill(victim, signal.SIGKILL)
        status, body, headers = in_flight.result(30)
        down = health_until(base, lambda s, b: s == 503, timeout_s=10)
        gate.unlink()
        health_until(base, lambda s, b: s == 200 and b["pod"]["engine_restarts"] == 1, timeout_s=120)
        replacement = engine_pid(base)
        after = [call(base, IMAGE_PATH, {"image_url": data_uri(jpeg_bytes(80, 60, i))})[0] for i in range(4)]
        metrics = scrape(base)
        supervising = proc.poll() is None
    assert (status, body["error"]["code"], headers.get("retry-after")) == (503, "unavailable", "1")
    assert "engine process" in down["reason"] and not any(e["ready"] for e in down["pod"]["engines"])
    assert (replacement != victim, after, supervising) == (True, [200] * 4, True)
    assert (value(metrics, "clip_engine_restarts_total"), value(metrics, "clip_engines_ready")) == (1, 1)
    died = [e for e in json_log(log_path) if e.get("logger") == "app.engine.supervise" and "died" in e["msg"]]
    assert [(e["pid"], e["restarts"], "signal 9" in e["msg"]) for e in died] == [(victim, 1, True)]


def test_engine_process_sigterm_drains_the_items_in_the_engine_then_stops_it_last(redis_url, gate, tmp_path):
    log_path = tmp_path / "server.log"
    env = ON | {"GATE_FILE": str(gate), "SHUTDOWN_GRACE_S": "30"}
    with pod(log_path, redis_url, module=GATED, **env) as (proc, base), ThreadPoolExecutor(6) as pool:
        # One image held on the model first, then five more: they queue behind it (sent together, all six
        # could make the first batch, the engine waiting for the items the workers announce).
        requests = [pool.submit(call, base, IMAGE_PATH, {"image_url": data_uri(jpeg_bytes(80, 60, 0))})]
        until(lambda: held(gate), "the first image held in the engine")
        requests += [
            pool.submit(call, base, IMAGE_PATH, {"image_url": data_uri(jpeg_bytes(80, 60, i))}) for i in range(1, 6)
        ]
        until(lambda: value(scrape(base), "clip_requests_in_flight") == 6, "six requests in flight")
        until(lambda: engine_images(base)["queue_depth"] == 5, "five images queued behind the held batch")
        proc.send_signal(signal.SIGTERM)
        health = health_until(base, lambda s, b: s == 503, timeout_s=10)
        gate.unlink()
        answers = [r.result(60)[0] for r in requests]
        exit_code = proc.wait(60)
    assert (health["status"], answers, exit_code) == ("draining", [200] * 6, 0)
    lines = json_log(log_path)
    worker_exits = [i for i, e in enumerate(lines) if e["msg"].startswith("Worker exiting")]
    engine_stop = [i for i, e in enumerate(lines) if e["msg"] == "engine process 0 stopped"]
    assert len(worker_exits) == 2 and len(engine_stop) == 1 and max(worker_exits) < engine_stop[0]


def test_engine_process_full_arena_answers_503_at_the_deadline_and_never_hangs(redis_url, gate, tmp_path):
    log_path = tmp_path / "server.log"
    # One worker: its 8 MiB arena holds one 1200x1200 picture's pixels (4.3 MB), not two.
    env = ON | {"GATE_FILE": str(gate), "WORKERS": "1", "ENGINE_ARENA_MB": "8", "IMAGE_PREPROCESS": "tensor"}
    big, other, huge = png(1200, 1200, 1), png(1200, 1200, 2), png(2000, 1500, 3)
    with (
        pod(log_path, redis_url, module=GATED, REQUEST_TIMEOUT_S="2", **env) as (_, base),
        ThreadPoolExecutor(1) as pool,
    ):
        first = pool.submit(call, base, IMAGE_PATH, {"image_url": data_uri(big, "png")})
        until(lambda: held(gate), "the first picture held in the engine")
        full = call(base, IMAGE_PATH, {"image_url": data_uri(other, "png")}, timeout=30)
        too_large = call(base, IMAGE_PATH, {"image_url": data_uri(huge, "png")}, timeout=30)
        gate.unlink()
        answered = first.result(30)[0]
        again = call(base, IMAGE_PATH, {"image_url": data_uri(other, "png")}, timeout=30)[0]
    assert (full[0], full[1]["error"]["code"], full[2].get("retry-after")) == (503, "overloaded", "1")
    assert "shared memory" in full[1]["error"]["message"]
    assert (too_large[0], too_large[1]["error"]["code"]) == (413, "image_too_large")
    assert (answered, again) == (200, 200)  # the region came back once the engine answered


@pytest.mark.parametrize(
    "paths",
    [{}, {"IMAGE_PREPROCESS": "tensor", "JPEG_DECODE": "engine"}],
    ids=["pil", "tensor-engine-jpeg"],
)
def test_engine_process_vectors_are_bit_identical_to_one_process_and_a_corrupt_image_fails_alone(
    redis_url, checkpoint, tmp_path, paths
):
    pictures = [photo_jpeg(640, 480, seed=1), png(300, 200, 2), corrupt_scan(photo_jpeg(320, 240, seed=3))]
    pictures += [photo_jpeg(64, 48, seed=4)]
    images = [data_uri(pictures[0]), data_uri(pictures[1], "png"), data_uri(pictures[2]), data_uri(pictures[3])]
    texts = ["a photo of a cat", "an engine fed by two workers"]
    env = {"CLIP_PRETRAINED": checkpoint, "CACHE_MAX_ENTRIES": "0"} | paths
    with pod(tmp_path / "server.log", redis_url, **ON, **env) as (_, base):
        remote = [call(base, BATCH_PATH, {"image_urls": images})[1]["results"]]
        remote += [call(base, TEXT_PATH, {"text": t})[1]["embedding"] for t in texts]
    settings = tiny_settings(
        clip_pretrained=checkpoint,
        cache_max_entries=0,
        image_preprocess=paths.get("IMAGE_PREPROCESS", "pil"),
        jpeg_decode=paths.get("JPEG_DECODE", "pool"),
    )
    with run_service(settings) as local:
        here = [call(local.base, BATCH_PATH, {"image_urls": images})[1]["results"]]
        here += [call(local.base, TEXT_PATH, {"text": t})[1]["embedding"] for t in texts]
    codes = [r["error"]["code"] if r["error"] else None for r in remote[0]]
    assert codes == [None, None, "invalid_image", None]
    assert remote == here  # every number, as JSON writes float32: the very vectors


def test_engine_process_that_cannot_load_the_model_stops_the_pod_with_exit_1(redis_url, tmp_path):
    env = os.environ | TINY_APP_ENV | ON | {"PYTHONPATH": PYTHONPATH, "STATE_URL": redis_url, "WORKERS": "2"}
    env |= {"CLIP_PRETRAINED": str(tmp_path / "missing.pt"), "HOST": "127.0.0.1", "PORT": str(free_port())}
    done = subprocess.run(
        [sys.executable, "-m", "app"], check=False, cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    lines = [json.loads(line) for line in done.stderr.decode().splitlines() if line.startswith("{")]
    reasons = [e["msg"] for e in lines if e["level"] == "error"]
    assert done.returncode == 1
    assert any("missing.pt" in r and "looks like a path" in r for r in reasons)
    assert any("engine process 0 failed to start" in r for r in reasons)


def test_engine_process_pod_health_lists_the_engine_and_metrics_count_it(redis_url, tmp_path):
    with pod(tmp_path / "server.log", redis_url, **ON) as (_, base):
        status, body, _ = call(base, "/health")
        vector = call(base, IMAGE_PATH, {"image_url": data_uri(jpeg_bytes(64, 48, 5))})
        metrics = scrape(base)
    engine = body["pod"]["engines"][0]
    assert (status, body["status"], body["devices"], body["pod"]["engine_restarts"]) == (200, "ok", ["cpu"], 0)
    assert (engine["index"], engine["ready"], engine["phase"], engine["device"]) == (0, True, "serving", "cpu")
    assert (vector[0], len(vector[1]["embedding"])) == (200, body["dim"])
    assert (value(metrics, "clip_engines"), value(metrics, "clip_engines_ready"), value(metrics, "clip_ready")) == (
        1,
        1,
        1,
    )


def test_engine_process_serves_the_one_model_of_models_by_its_name(redis_url, checkpoint, tmp_path):
    models = [{"model": "clip-tiny", "pretrained": checkpoint, "name": "tiny", "matryoshka_dims": [8]}]
    picture = data_uri(photo_jpeg(96, 64, seed=7))
    with pod(tmp_path / "server.log", redis_url, MODELS=json.dumps(models), **ON) as (_, base):
        listed = call(base, "/v1/models")[1]
        text = signed_call(base, TEXT_PATH, {"text": "a cat", "model": "tiny", "dimensions": 8})
        image = signed_call(base, IMAGE_PATH, {"image_url": picture, "model": "tiny"})
        unknown = signed_call(base, TEXT_PATH, {"text": "a cat", "model": "other"})
        health = call(base, "/health")[1]
    card = listed["data"][0]
    assert [m["id"] for m in listed["data"]] == ["tiny"]
    assert (card["loaded"], card["status"], health["pod"]["engines"][0]["ready"]) == (True, "ready", True)
    assert (text[0], text[1]["model"], len(text[1]["embedding"])) == (200, "tiny", 8)
    assert (image[0], image[1]["model"], len(image[1]["embedding"])) == (200, "tiny", health["dim"])
    assert (unknown[0], unknown[1]["error"]["code"]) == (422, "invalid_request")


def test_engine_process_with_several_models_refuses_to_start_saying_how_to_fix_it(tmp_path):
    models = [{"model": "clip-tiny", "pretrained": "none", "name": n} for n in ("a", "b")]
    env = os.environ | TINY_APP_ENV | ON | {"PYTHONPATH": PYTHONPATH, "WORKERS": "1", "MODELS": json.dumps(models)}
    env |= {"HOST": "127.0.0.1", "PORT": str(free_port())}
    done = subprocess.run(
        [sys.executable, "-m", "app"], check=False, cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 2
    assert "MODELS lists 2 (a, b): set ENGINE_PROCESS=off" in done.stderr.decode()
