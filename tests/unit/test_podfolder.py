"""The pod's folder: room checked up front, metric files written in full, a dead worker's counts kept."""

from __future__ import annotations

import os
import tempfile

import pytest
from prometheus_client.mmap_dict import MmapedDict

from app.ops.exits import ExitCode, StartupError
from app.ops.podfolder import (
    METRIC_FILE_BYTES,
    METRIC_FILE_TYPES,
    METRICS_SUBFOLDER,
    make_pod_folder,
    reserve_metric_files,
    shrink_metric_files,
)


def test_make_pod_folder_holds_the_metrics_subfolder_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = make_pod_folder(workers=2)
    assert (folder.parent, [p.name for p in folder.iterdir()]) == (tmp_path, [METRICS_SUBFOLDER])


def test_make_pod_folder_without_a_usable_temporary_folder_says_set_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(StartupError) as raised:
        make_pod_folder(workers=2)
    assert raised.value.exit_code is ExitCode.BAD_SETUP
    assert "no usable temporary folder" in raised.value.message and "TMPDIR" in raised.value.message


def test_make_pod_folder_without_room_for_every_worker_says_how_much(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    workers = 2 * free // (2 * METRIC_FILE_BYTES) + 1  # twice as many workers as the disk holds
    with pytest.raises(StartupError) as raised:
        make_pod_folder(workers=workers)
    assert raised.value.exit_code is ExitCode.BAD_SETUP
    assert f"has no room for the metrics of {workers} workers" in raised.value.message
    assert list(tmp_path.iterdir()) == []  # the folder it made is gone again


def test_reserve_metric_files_writes_every_block(tmp_path):
    reserve_metric_files(tmp_path, 41)
    files = sorted(tmp_path.iterdir())
    assert [p.name for p in files] == [f"{kind}_41.db" for kind in sorted(METRIC_FILE_TYPES)]
    # Written, not sparse: a page of the mmap can never meet a full disk.
    assert all(
        (p.stat().st_size, p.stat().st_blocks * 512 >= METRIC_FILE_BYTES) == (METRIC_FILE_BYTES, True) for p in files
    )


def test_reserve_metric_files_without_a_folder_is_a_startup_error(tmp_path):
    with pytest.raises(StartupError) as raised:
        reserve_metric_files(tmp_path / "missing", 41)
    assert raised.value.exit_code is ExitCode.BAD_SETUP


def _count(path, key: str, amount: float) -> None:
    counts = MmapedDict(str(path))
    counts.write_value(key, amount, 0.0)
    counts.close()


def test_shrink_metric_files_keeps_a_dead_workers_counts(tmp_path):
    reserve_metric_files(tmp_path, 41)
    counter = tmp_path / "counter_41.db"
    _count(counter, "clip_errors_total", 7.0)
    shrink_metric_files(tmp_path, 41)
    assert counter.stat().st_size < METRIC_FILE_BYTES
    assert [(key, value) for key, value, *_ in MmapedDict.read_all_values_from_file(str(counter))] == [
        ("clip_errors_total", 7.0)
    ]


def test_reserve_metric_files_for_a_reused_pid_keeps_the_counts_already_there(tmp_path):
    reserve_metric_files(tmp_path, 41)
    counter = tmp_path / "counter_41.db"
    _count(counter, "clip_errors_total", 7.0)
    shrink_metric_files(tmp_path, 41)
    reserve_metric_files(tmp_path, 41)  # a new worker that got the dead one's pid
    _count(counter, "clip_embeddings_total", 1.0)
    values = {key: value for key, value, *_ in MmapedDict.read_all_values_from_file(str(counter))}
    assert (counter.stat().st_size, values) == (
        METRIC_FILE_BYTES,
        {"clip_errors_total": 7.0, "clip_embeddings_total": 1.0},
    )
