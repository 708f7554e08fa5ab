"""The benchmarks' plots: the PNG itself, and which figures of each sweep go on which line."""

from __future__ import annotations

import pytest
from PIL import Image

from bench import load, ray_overhead, workers
from bench.plot import Panel, sweep_figure


def test_sweep_figure_writes_a_png_of_one_panel_per_series_set(tmp_path):
    rate = Panel("images/s", {"a": [(2, 20.0), (1, 10.0)], "b": [(1, 5.0)]})
    path = sweep_figure(tmp_path / "deep" / "sweep.png", "title", "clients", [rate, Panel("p50 ms")], "a note")
    with Image.open(path) as image:
        assert (image.format, image.size) == ("PNG", (420, 340))  # the empty panel is left out


def test_sweep_figure_refuses_a_plot_of_nothing(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        sweep_figure(tmp_path / "x.png", "title", "clients", [Panel("images/s")], "note")
    assert not (tmp_path / "x.png").exists()


def _result(clients: int, batch: int, rate: float, p50: float) -> dict:
    return {"kind": "image", "clients": clients, "batch": batch, "items_per_s": rate, "p50_ms": p50}


def test_load_sweep_over_clients_draws_a_line_per_batch_size():
    results = [_result(1, 1, 10, 5), _result(4, 1, 30, 8), _result(1, 16, 40, 50), _result(4, 16, 60, 90)]
    xlabel, (rate, p50) = load.sweep_panels(results)
    assert xlabel == "clients"
    assert rate.series == {"B=1": [(1, 10), (4, 30)], "B=16": [(1, 40), (4, 60)]}
    assert p50.series == {"B=1": [(1, 5), (4, 8)], "B=16": [(1, 50), (4, 90)]}


def test_load_sweep_over_batch_size_alone_puts_it_on_x():
    xlabel, (rate, _) = load.sweep_panels([_result(16, 1, 10, 5), _result(16, 8, 30, 8)])
    assert (xlabel, rate.ylabel, rate.series) == ("images per request", "images/s", {"C=16": [(1, 10), (8, 30)]})


def test_load_sweep_of_captions_names_its_one_line():
    results = [_result(1, 1, 10, 5) | {"kind": "text"}, _result(4, 1, 30, 8) | {"kind": "text"}]
    xlabel, (rate, _) = load.sweep_panels(results)
    assert (xlabel, rate.ylabel, rate.series) == ("clients", "texts/s", {"one text per request": [(1, 10), (4, 30)]})


def _figures(repeat: int, workers_: int, state: bool, load_: str, rate: float, cpu: float) -> workers.Figures:
    return workers.Figures(
        repeat, "arm", workers_, state, load_, load_.split()[0], 16, 16, images_per_s=rate, server_us=cpu
    )


def test_workers_plot_averages_the_repeats_and_leaves_out_the_latency_load():
    runs = [
        _figures(1, 1, False, "tiny c16×b16", 100, 900),
        _figures(2, 1, False, "tiny c16×b16", 120, 1100),
        _figures(1, 1, True, "tiny c16×b16", 80, 1200),
        _figures(1, 2, True, "tiny c16×b16", 150, 1000),
        _figures(1, 1, True, "tiny c1×b1", 10, 3000),
    ]
    rate, cpu = workers.scaling_panels(runs, latency_load="tiny c1×b1")
    assert rate.series == {
        "tiny c16×b16, STATE_URL": [(1, 80), (2, 150)],
        "tiny c16×b16, no STATE_URL": [(1, 110)],
    }
    assert cpu.series["tiny c16×b16, no STATE_URL"] == [(1, 1000)]


def test_ray_overhead_plot_draws_the_caption_loads_per_arm_and_the_plain_mean():
    def figures(rate: float, p50: float) -> dict[str, float]:
        return {"items_per_s": rate, "p50_ms": p50, "p99_ms": 9.0, "errors": 0.0}

    rows = [
        ("proxy", 1, "text", 1, figures(100, 1), figures(10, 9)),
        ("proxy", 1, "image", 1, figures(50, 2), figures(5, 9)),
        ("haproxy", 1, "text", 1, figures(300, 3), figures(90, 4)),
        ("haproxy", 2, "text", 16, figures(900, 16), figures(700, 20)),
    ]
    rate, p50 = ray_overhead.sweep_panels(rows)
    assert rate.series == {
        "proxy, 1 replica(s)": [(1, 10)],
        "haproxy, 1 replica(s)": [(1, 90)],
        "haproxy, 2 replica(s)": [(16, 700)],
        "plain": [(1, 200), (16, 900)],
    }
    assert p50.series["plain"] == [(1, 2), (16, 16)]
