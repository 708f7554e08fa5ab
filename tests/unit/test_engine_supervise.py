"""The supervisor's watch over engine processes, with real child processes and a real pod folder."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from gunicorn.errors import HaltServer

from app.engine.board import EngineNotice
from app.engine.supervise import EngineSet
from app.ops.pod import READY, PodBoard
from app.ops.podfolder import METRICS_SUBFOLDER
from tests.support.data import tiny_settings


def _ended_engine(engines: EngineSet, *, said_ready: bool, board: PodBoard) -> None:
    """Put an engine process in slot 0 that has already exited, after saying it was ready when `said_ready`."""
    engine = engines._engines[0]
    engine.process = subprocess.Popen([sys.executable, "-c", "pass"])
    engine.started = time.monotonic()
    engine.process.wait()
    if said_ready:
        board.engines.publish(EngineNotice(pid=engine.process.pid, index=0, status=READY, device="cpu"))


@pytest.fixture
def pod_folder(tmp_path, monkeypatch):
    (tmp_path / METRICS_SUBFOLDER).mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / METRICS_SUBFOLDER))
    return tmp_path


def test_engine_set_replaces_an_engine_that_died_right_after_saying_it_was_ready(pod_folder):
    # The watch had not yet read its notice: the engine was ready all the same, so this is no start failure.
    board = PodBoard(pod_folder, expected=2, engines=1)
    engines = EngineSet(tiny_settings(), pod_folder, board, ["cpu"], None)
    _ended_engine(engines, said_ready=True, board=board)
    engines.watch()  # the replacement waits out its backoff: nothing is spawned by this call
    assert (board.summary().engine_restarts, engines._engines[0].process) == (1, None)


def test_engine_set_stops_the_pod_when_an_engine_dies_before_it_was_ever_ready(pod_folder):
    board = PodBoard(pod_folder, expected=2, engines=1)
    engines = EngineSet(tiny_settings(), pod_folder, board, ["cpu"], None)
    _ended_engine(engines, said_ready=False, board=board)
    with pytest.raises(HaltServer, match="engine process 0 failed to start"):
        engines.watch()
