"""/health with WORKERS > 1: 200 only while every worker on the pod's notice board is ready."""

from __future__ import annotations

import time

from app.ops.pod import PodBoard, WorkerNotice
from tests.support.api import call
from tests.support.data import tiny_settings
from tests.support.fake_model import FakeEmbedder
from tests.support.service import run_service


def test_health_is_503_while_another_worker_loads_then_200(tmp_path):
    board = PodBoard(tmp_path, expected=2)
    board.publish(WorkerNotice(pid=101, index=0, status="ok", device="cpu"))
    board.publish(WorkerNotice(pid=102, index=1, status="loading", device="cpu"))
    with run_service(tiny_settings(), embedder_factory=lambda s: FakeEmbedder(), wait_ready=False, pod=board) as svc:
        deadline = time.monotonic() + 30
        while (loading := call(svc.base, "/health"))[1]["status"] == "loading":  # this worker's own model
            assert time.monotonic() < deadline, "the app never loaded its model"
            time.sleep(0.02)
        board.publish(WorkerNotice(pid=102, index=1, status="ok", device="cpu"))
        ready = call(svc.base, "/health")
    status, body, headers = loading
    assert (status, body["status"], body["reason"], headers["retry-after"]) == (
        503,
        "unavailable",
        "1 of 2 workers ready",
        "1",
    )
    assert [(w["ready"], w["phase"]) for w in body["pod"]["workers"]] == [(True, "serving"), (False, "loading")]
    status, body, _ = ready
    assert (status, body["status"], body["pod"]["ready"], body["devices"]) == (200, "ok", 2, ["cpu"])
