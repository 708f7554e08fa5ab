"""The garbage collector's settings for the server process, applied once the model is ready.

Without them, each full collection walks everything torch, open_clip and FastAPI built at start-up,
with the event loop and the model thread stopped; request objects that live through one forward pass
reach the oldest generation quickly, which triggers such collections often under load. The figures are
in docs/performance.md (heap settling).
"""

from __future__ import annotations

import gc

# Net new tracked objects between young-generation collections (CPython's default is 700). Requests
# free almost everything they allocate by reference counting, so collections this often found little.
GEN0_THRESHOLD = 10_000


def settle_heap() -> None:
    """Freeze what start-up built, so that collections skip it, and collect young objects less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
