"""Client for the CLIP embedding service (no torch needed)."""

from __future__ import annotations

from clip_client import signing

__all__ = ["signing"]
