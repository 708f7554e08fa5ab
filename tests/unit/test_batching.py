"""The batching policy, from a table of situations: dispatch now, or wait until when."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.inference.batching import DISPATCH, BatchLimits, GatherState, Wait, decide

# A quiet window of 0.25 s, so a cap of 2 s; a forward pass of 1 s, so a share of 0.5 s. Times are exact in binary.
LIMITS = BatchLimits(max_batch=8, max_wait_s=0.25)
# One item of one caller, taken at 100 s; the last forward pass ended at 99 s; no history, nothing announced.
BASE = GatherState(LIMITS, items=1, callers=1, started=100.0, newest_enqueued=100.0, idle_since=99.0, forward_s=1.0)

ROWS = [
    # 1. A full batch goes at once, whatever else holds.
    pytest.param({"items": 8, "incoming": 2, "waves": (8,)}, 100.0, DISPATCH, id="full-batch-goes-at-once"),
    pytest.param({"items": 7, "callers": 7, "waves": (8,)}, 100.0, Wait(100.25), id="one-short-of-full-waits"),
    # 2. A complete fresh wave goes at once.
    pytest.param({"items": 3, "callers": 3, "waves": (3,)}, 100.0, DISPATCH, id="complete-fresh-wave-goes-at-once"),
    pytest.param({"items": 3, "callers": 3}, 100.0, Wait(100.25), id="no-recent-wave-waits"),
    pytest.param(
        {"items": 3, "callers": 3, "waves": (1, 4, 2)}, 100.0, Wait(100.25), id="the-largest-recent-wave-counts"
    ),
    pytest.param({"items": 4, "callers": 1, "waves": (1,)}, 100.0, DISPATCH, id="a-wave-counts-callers-not-items"),
    pytest.param(
        {"items": 3, "callers": 3, "waves": (3,), "newest_enqueued": 98.5},
        100.0,
        Wait(100.25),
        id="a-wave-queued-during-the-pass-is-not-fresh",
    ),
    pytest.param(
        {"items": 3, "callers": 3, "waves": (3,), "newest_enqueued": 99.0},
        100.0,
        DISPATCH,
        id="an-item-queued-as-the-pass-ended-is-fresh",
    ),
    pytest.param(
        {"items": 3, "callers": 3, "waves": (3,), "incoming": 1},
        100.0,
        Wait(100.25),
        id="a-complete-wave-waits-for-announced-items",
    ),
    # 3. Otherwise wait for the next item, up to the quiet window; each arrival re-arms it.
    pytest.param({}, 100.0, Wait(100.25), id="a-lone-item-waits-one-window"),
    pytest.param({"items": 2, "newest_enqueued": 100.75}, 100.75, Wait(101.0), id="an-arrival-re-arms-the-window"),
    # 4. A wait that runs out ends the batch, unless items are announced or it is short of a wave.
    pytest.param({"waited_out": True}, 100.25, DISPATCH, id="a-wait-run-out-ends-the-batch"),
    pytest.param({"waited_out": True, "incoming": 1}, 100.25, Wait(100.5), id="announced-items-keep-it-waiting"),
    pytest.param(
        {"waited_out": True, "items": 2, "callers": 2, "waves": (4,)},
        100.25,
        Wait(100.5),
        id="short-of-a-wave-waits-another-window",
    ),
    pytest.param(
        {"waited_out": True, "items": 2, "callers": 2, "waves": (4,)},
        100.5,
        DISPATCH,
        id="short-of-a-wave-goes-after-the-forward-share",
    ),
    pytest.param(
        {"waited_out": True, "items": 2, "callers": 2, "waves": (4,), "forward_s": 0.0},
        100.25,
        DISPATCH,
        id="short-of-a-wave-with-a-free-model-goes",
    ),
    # 5. No wait goes past the cap: cap_factor * max_wait, or the forward share while items are announced.
    pytest.param(
        {"items": 5, "newest_enqueued": 101.875}, 101.875, Wait(102.0), id="the-cap-cuts-the-last-window-short"
    ),
    pytest.param(
        {"items": 6, "newest_enqueued": 102.0}, 102.0, DISPATCH, id="at-the-cap-goes-though-an-item-just-came"
    ),
    pytest.param(
        {"waited_out": True, "items": 2, "callers": 2, "waves": (4,), "forward_s": 8.0},
        101.875,
        Wait(102.0),
        id="short-of-a-wave-with-a-slow-model-waits-to-the-cap",
    ),
    pytest.param(
        {"waited_out": True, "items": 2, "callers": 2, "waves": (4,), "forward_s": 8.0},
        102.0,
        DISPATCH,
        id="short-of-a-wave-with-a-slow-model-goes-at-the-cap",
    ),
    pytest.param(
        {"waited_out": True, "incoming": 1}, 102.0, DISPATCH, id="announced-items-are-not-waited-for-past-the-cap"
    ),
    pytest.param(
        {"waited_out": True, "incoming": 1, "forward_s": 8.0},
        103.875,
        Wait(104.0),
        id="announced-items-extend-the-cap-to-the-forward-share",
    ),
    pytest.param(
        {"waited_out": True, "incoming": 1, "forward_s": 8.0},
        104.0,
        DISPATCH,
        id="announced-items-wait-at-most-the-forward-share",
    ),
    pytest.param(
        {"limits": BatchLimits(max_batch=8, max_wait_s=0.0), "waves": (4,), "incoming": 1},
        100.0,
        DISPATCH,
        id="a-zero-wait-never-waits",
    ),
]


@pytest.mark.parametrize(("changes", "now", "expected"), ROWS)
def test_decide_dispatches_or_waits_until_the_time_its_rules_give(changes, now, expected):
    assert decide(replace(BASE, **changes), now) == expected
