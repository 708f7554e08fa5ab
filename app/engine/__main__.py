"""`python -m app.engine`: one engine process of a pod, started by its supervisor (app.engine.process)."""

from __future__ import annotations

import sys

from app.engine.process import main

if __name__ == "__main__":
    sys.exit(main())
