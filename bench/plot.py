"""PNG line plots of the benchmarks' sweeps (WORKERS, clients, batch size), beside the tables they print.

matplotlib's Agg backend: no display needed. Each figure is one row of panels sharing an x axis, one
line per series, the measured points marked (a sweep has few points: the lines only guide the eye),
and a note under it saying what was run, when, and on what machine.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

Point = tuple[float, float]


@dataclass(slots=True)
class Panel:
    """One chart: its y axis, and its series (name → points in x order)."""

    ylabel: str
    series: dict[str, list[Point]] = field(default_factory=dict)

    def add(self, name: str, x: float, y: float) -> None:
        self.series.setdefault(name, []).append((x, y))


def machine_note() -> str:
    """Say when, at which commit and on what machine a run was made, and how busy the machine was."""
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "no git"
    load = os.getloadavg()[0]
    return f"{time.strftime('%Y-%m-%d %H:%M')} at {commit}, {os.cpu_count()} cores, load average {load:.1f} at the end"


def sweep_figure(path: Path, title: str, xlabel: str, panels: Sequence[Panel], note: str, log_x: bool = False) -> Path:
    """Draw `panels` side by side into the PNG `path` (folders made as needed); return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [p for p in panels if p.series]
    if not drawn:
        raise ValueError("nothing to plot: every panel is empty")
    figure, axes = plt.subplots(1, len(drawn), figsize=(4.2 * len(drawn), 3.4), dpi=100, squeeze=False)
    for axis, panel in zip(axes[0], drawn, strict=True):
        for name, points in panel.series.items():
            xs, ys = zip(*sorted(points), strict=True)
            axis.plot(xs, ys, marker="o", label=name)
        xs_all = sorted({x for points in panel.series.values() for x, _ in points})
        if log_x:
            axis.set_xscale("log", base=2)
        axis.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
        axis.set_xlabel(xlabel)
        axis.set_ylabel(panel.ylabel)
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(title, fontsize="medium")
    figure.text(0.01, 0.01, note, fontsize="x-small", color="0.35", wrap=True)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    plt.close(figure)
    return path
