"""The pod's folder (WORKERS > 1), in TMPDIR: the notice board, and prometheus_client's multiprocess files.

Each worker writes its counters and histograms through mmap into files of the `prometheus` subfolder.
A page the disk cannot hold kills the writer with SIGBUS, with no message, and gunicorn restarts it in a
loop. So the supervisor checks that the folder has room for every worker before it starts one, and each
worker writes its own metric files in full before anything counts into them.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from pathlib import Path

from app.ops.exits import ExitCode, StartupError

METRICS_SUBFOLDER = "prometheus"
# The files prometheus_client maps for one process, `{type}_{pid}.db`: one per type of metric the process
# creates (app.ops.metrics makes counters and histograms, and no prometheus_client gauges).
METRIC_FILE_TYPES = ("counter", "histogram")
# Bytes written into each: prometheus_client starts a file at 64 KiB and doubles it when its series
# outgrow it. Measured after every endpoint had answered, errors included: 4 KiB of counters and 40 KiB
# of histograms per worker.
METRIC_FILE_BYTES = 1 << 20
WORKER_BYTES = METRIC_FILE_BYTES * len(METRIC_FILE_TYPES)
_CHUNK = 1 << 20


def make_pod_folder(workers: int) -> Path:
    """Return a new folder in TMPDIR with room for `workers` workers' metric files.

    Raise StartupError (exit 2), saying what to change, when there is no usable temporary folder or no room.
    """
    try:
        folder = Path(tempfile.mkdtemp(prefix="clip-pod-"))
    except OSError as exc:  # FileNotFoundError "No usable temporary directory found in [...]" among them
        raise StartupError(
            f"no usable temporary folder for the pod's metrics ({exc}); set TMPDIR to a writable folder",
            ExitCode.BAD_SETUP,
        ) from None
    needed = workers * WORKER_BYTES
    try:
        (folder / METRICS_SUBFOLDER).mkdir()
        probe = folder / "room.probe"
        write_zeros(probe, WORKER_BYTES)  # a real write: catches a file-size limit or a quota as well
        probe.unlink()
        stats = os.statvfs(folder)
        if stats.f_bavail * stats.f_frsize < needed:
            raise OSError(f"{stats.f_bavail * stats.f_frsize // 1024} KiB free")
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise StartupError(
            f"the temporary folder {folder.parent} has no room for the metrics of {workers} workers "
            f"({needed // (1 << 20)} MiB): {exc.strerror or exc}; free space there, or set TMPDIR to a folder with room",
            ExitCode.BAD_SETUP,
        ) from None
    return folder


def reserve_metric_files(metrics_dir: Path, pid: int) -> None:
    """Write process `pid`'s metric files in full, before prometheus_client maps them (it keeps their size).

    A file left by an earlier process with the same pid keeps its counts. Raise StartupError (exit 2) when
    the folder has no room for them.
    """
    try:
        for kind in METRIC_FILE_TYPES:
            write_zeros(metrics_dir / f"{kind}_{pid}.db", METRIC_FILE_BYTES)
    except OSError as exc:
        raise StartupError(
            f"no room for a worker's metrics in {metrics_dir} ({WORKER_BYTES // (1 << 20)} MiB): "
            f"{exc.strerror or exc}; free space there, or set TMPDIR to a folder with room",
            ExitCode.BAD_SETUP,
        ) from None


def shrink_metric_files(metrics_dir: Path, pid: int) -> None:
    """Cut a dead process's metric files to the bytes they use (their counts stay: the pod's totals must not drop)."""
    for kind in METRIC_FILE_TYPES:
        path = metrics_dir / f"{kind}_{pid}.db"
        try:
            with open(path, "r+b") as file:
                # prometheus_client.mmap_dict: the file starts with the number of bytes in use.
                (used,) = struct.unpack("i", file.read(4).ljust(4, b"\0"))
                if 8 <= used < os.fstat(file.fileno()).st_size:
                    file.truncate(used)
        except OSError:
            continue  # never created, or already gone


def write_zeros(path: Path, size: int) -> None:
    """Make `path` at least `size` bytes long by writing zeros after what it holds (no sparse blocks)."""
    with open(path, "ab") as out:
        out.writelines(bytes(min(_CHUNK, size - start)) for start in range(out.tell(), size, _CHUNK))
        out.flush()
        os.fsync(out.fileno())
