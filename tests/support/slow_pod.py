"""`python -m tests.support.slow_pod`: `python -m app` whose model takes LOAD_DELAY_S longer to load.

The seam of the tests that need a load long enough to watch (app.__main__.main's `embedder_factory`).
"""

from __future__ import annotations

import os
import sys
import time

from app.__main__ import main
from app.inference.loading import load_clip
from app.inference.model import Embedder
from app.settings import Settings


def slow_clip(settings: Settings) -> Embedder:
    """Wait LOAD_DELAY_S seconds, then load the configured model."""
    time.sleep(float(os.environ["LOAD_DELAY_S"]))
    return load_clip(settings)


if __name__ == "__main__":
    sys.exit(main(embedder_factory=slow_clip))
