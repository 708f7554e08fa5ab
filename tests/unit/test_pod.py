"""The pod's notice board and the worker-to-GPU mapping, without processes."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from app.engine.board import EngineNotice
from app.ops.pod import STALE_AFTER_S, PodBoard, WorkerNotice
from app.ops.workers import device_for_worker


@pytest.mark.parametrize(
    ("requested", "index", "gpus", "expected"),
    [
        ("auto", 0, 4, "cuda:0"),
        ("auto", 5, 4, "cuda:1"),
        ("cuda", 3, 2, "cuda:1"),
        ("cuda", 2, 2, "cuda:0"),
        ("auto", 3, 0, "auto"),
        ("cpu", 3, 4, "cpu"),
        ("cuda:2", 0, 4, "cuda:2"),
    ],
)
def test_device_for_worker_spreads_workers_over_gpus(requested, index, gpus, expected):
    assert device_for_worker(requested, index, gpus) == expected


def _notice(pid: int, index: int, status: str = "ok", **gauges: float) -> WorkerNotice:
    return WorkerNotice(pid=pid, index=index, status=status, device="cpu", gauges=dict(gauges))


def test_pod_board_is_ready_only_when_every_expected_worker_is(tmp_path):
    board = PodBoard(tmp_path, expected=2)
    board.publish(_notice(11, 0))
    assert (board.summary().ready, board.summary().all_ready) == (1, False)
    board.publish(_notice(12, 1, status="loading"))
    assert board.summary().all_ready is False
    board.publish(_notice(12, 1))
    summary = board.summary()
    assert (summary.ready, summary.all_ready, [n.pid for n in summary.notices]) == (2, True, [11, 12])


def test_pod_board_is_ready_only_when_every_engine_process_is_too(tmp_path):
    board = PodBoard(tmp_path, expected=1, engines=2)
    board.publish(_notice(11, 0))
    board.engines.publish(EngineNotice(pid=21, index=0, status="ok", device="cuda:0"))
    board.engines.publish(EngineNotice(pid=22, index=1, status="loading", device="cuda:1"))
    loading = board.summary()
    board.engines.publish(EngineNotice(pid=22, index=1, status="ok", device="cuda:1"))
    serving = board.summary()
    board.engines.withdraw(0)  # engine 0 died: the supervisor withdrew its notice
    died = board.summary()
    assert (loading.all_ready, loading.missing()) == (False, "1 of 2 engine processes ready")
    assert (serving.all_ready, serving.devices) == (True, ["cpu", "cuda:0", "cuda:1"])
    assert (died.all_ready, died.missing()) == (False, "1 of 2 engine processes ready")


def test_pod_board_stale_engine_process_counts_as_unresponsive(tmp_path):
    board = PodBoard(tmp_path, expected=1, engines=1)
    board.publish(_notice(11, 0))
    board.engines.publish(EngineNotice(pid=21, index=0, status="ok", device="cpu"))
    updated = board.summary().engines[0].updated
    later = board.summary(now=updated + STALE_AFTER_S + 1)
    assert ([e.to_json()["phase"] for e in later.engines], later.all_ready) == (["unresponsive"], False)


def test_pod_board_withdrawn_worker_is_no_longer_counted(tmp_path):
    board = PodBoard(tmp_path, expected=2)
    board.publish(_notice(11, 0))
    board.publish(_notice(12, 1))
    board.withdraw(12)
    assert [n.pid for n in board.summary().notices] == [11]
    assert board.summary().all_ready is False


def test_pod_board_stale_worker_counts_as_unresponsive(tmp_path):
    board = PodBoard(tmp_path, expected=1)
    board.publish(_notice(11, 0))
    updated = board.summary().notices[0].updated
    later = board.summary(now=updated + STALE_AFTER_S + 1)
    assert ([n.status for n in later.notices], later.all_ready) == (["unresponsive"], False)


def test_pod_board_counts_restarts(tmp_path):
    board = PodBoard(tmp_path, expected=1)
    assert board.summary().restarts == 0
    assert (board.count_restart(), board.count_restart()) == (1, 2)
    assert board.summary().to_json()["restarts"] == 2


class _Read(Collector):
    def __init__(self, board: PodBoard) -> None:
        self._board = board

    def collect(self):
        return self._board.metrics()


def _lines(board: PodBoard) -> set[str]:
    registry = CollectorRegistry()
    registry.register(_Read(board))
    return set(generate_latest(registry).decode().splitlines())


def test_pod_board_metrics_sum_the_workers_gauges(tmp_path):
    board = PodBoard(tmp_path, expected=3)
    one = _notice(11, 0, clip_requests_in_flight=2, clip_admitted_items=5)
    one.queue_depth = {"images": 3, "texts": 1}
    two = _notice(12, 1, clip_requests_in_flight=1, clip_admitted_items=4)
    two.queue_depth = {"images": 2}
    board.publish(one)
    board.publish(two)
    assert {
        "clip_workers 3.0",
        "clip_workers_ready 2.0",
        "clip_ready 0.0",
        "clip_requests_in_flight 3.0",
        "clip_admitted_items 9.0",
        'clip_queue_depth{queue="images"} 5.0',
        'clip_queue_depth{queue="texts"} 1.0',
        "clip_worker_restarts_total 0.0",
    } <= _lines(board)


def test_pod_summary_workers_say_ready_and_phase_never_status(tmp_path):
    board = PodBoard(tmp_path, expected=2)
    board.publish(_notice(11, 0))
    board.publish(_notice(12, 1, status="loading"))
    assert board.summary().to_json()["workers"] == [
        {"index": 0, "pid": 11, "ready": True, "phase": "serving", "device": "cpu"},
        {"index": 1, "pid": 12, "ready": False, "phase": "loading", "device": "cpu"},
    ]


@pytest.mark.parametrize(("up", "ready"), [(1.0, "1.0"), (0.0, "0.0")])
def test_pod_board_metrics_ready_only_while_the_shared_store_answers(tmp_path, up, ready):
    board = PodBoard(tmp_path, expected=2)
    board.publish(_notice(11, 0, clip_shared_state_up=1.0))
    board.publish(_notice(12, 1, clip_shared_state_up=up))
    assert {f"clip_ready {ready}", f"clip_shared_state_up {up}"} <= _lines(board)


def test_pod_board_stopping_is_said_once_marked_and_keeps_the_restarts(tmp_path):
    board = PodBoard(tmp_path, expected=2)
    board.count_restart()
    before = board.stopping()
    board.mark_stopping()
    board.count_restart()
    assert (before, board.stopping(), board.summary().restarts) == (False, True, 2)
