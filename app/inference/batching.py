"""When a partial batch goes to the model: the engine's batching policy, as a pure function of the situation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

# However items keep trickling in, a batch waits at most this many times the quiet window in all...
GATHER_CAP_FACTOR = 8
# ...or, while announced items are still being prepared, at most this share of a recent forward pass.
INCOMING_WAIT_SHARE = 0.5
# A wave is the callers that submitted between two dispatches; the policy remembers this many. Callers, not
# items: a request of 32 images is one client, and the lone requests after it must not wait for 31 more.
WAVE_MEMORY = 4


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """The settings of one queue's policy."""

    max_batch: int  # ENGINE_MAX_BATCH: most items in one forward pass
    max_wait_s: float  # ENGINE_MAX_WAIT_MS: the quiet window a partial batch waits for its next item
    cap_factor: float = GATHER_CAP_FACTOR
    incoming_share: float = INCOMING_WAIT_SHARE


@dataclass(frozen=True, slots=True)
class GatherState:
    """What the policy sees of one batch being gathered; every time is a reading of the engine's one clock."""

    limits: BatchLimits
    items: int  # items in the batch so far (the engine has taken every queued item it has room for)
    callers: int  # distinct callers among them: a request of many images is one caller
    started: float  # when the gather took its first item
    newest_enqueued: float  # when the newest item of the batch was submitted
    idle_since: float = float("-inf")  # when the last forward pass ended
    waves: tuple[int, ...] = ()  # callers of each recent wave, oldest first
    incoming: int = 0  # items announced as being downloaded, decoded or tokenised, not yet submitted
    forward_s: float = 0.0  # running estimate of one forward pass; 0 before the first
    waited_out: bool = False  # the last wait for an item ran out with none arriving


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send the batch to the model now."""


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait for the next item until `until` (on the engine's clock), then ask again."""

    until: float


Decision: TypeAlias = Dispatch | Wait
DISPATCH: Final = Dispatch()


def decide(state: GatherState, now: float) -> Decision:
    """Say whether the batch goes now or waits for another item, and until when.

    The engine takes every queued item it has room for, then asks; again after each arrival and each wait
    that runs out.
    1. A full batch goes at once.
    2. A complete fresh wave goes at once: the batch holds as many callers as the largest recent wave, its
       newest item came after the last forward pass ended, and no item is announced. Every client is in.
    3. Otherwise wait for the next item, up to max_wait (the quiet window); each arrival re-arms it.
    4. When a wait runs out with no arrival, the batch goes, unless items are announced, or it is short of
       the largest recent wave and has waited less than incoming_share * the forward pass: then it waits
       another quiet window.
    5. No wait goes past the cap, cap_factor * max_wait after the gather started; while items are
       announced, the cap extends to incoming_share * the forward pass, if that is longer. A batch at its
       cap goes, so a zero max_wait never waits.
    """
    limits = state.limits
    if state.items >= limits.max_batch:
        return DISPATCH
    wave = min(max(state.waves, default=0), limits.max_batch)
    # Items queued while the model was busy are another group: sending them alone would keep the groups apart.
    fresh = state.newest_enqueued >= state.idle_since
    if not state.incoming and wave and state.callers >= wave and fresh:
        return DISPATCH
    share_s = limits.incoming_share * state.forward_s
    if state.waited_out:
        # Short of a recent wave, the rest of its clients are likely on their way.
        short = state.callers < wave and now - state.started < share_s
        if not state.incoming and not short:
            return DISPATCH
    cap_s = limits.max_wait_s * limits.cap_factor
    if state.incoming:
        # A batch split in two by a few late decodes costs a whole extra pass.
        cap_s = max(cap_s, share_s)
    until = min(now + limits.max_wait_s, state.started + cap_s)
    return Wait(until) if until > now else DISPATCH
