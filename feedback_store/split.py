"""The held-out split: a stable, seedless choice of which interactions and tasks stay out of training.

An id is held out when the first 8 bytes of its sha256, read as a fraction of 2**64, fall below
`fraction`. The same id always lands on the same side (unlike Python's salted `hash`), and raising
the fraction only adds ids to the held-out side. The store computes it once, at insert, and keeps
the answer in the row, so a later change of the configured fraction never moves old rows.
"""

from __future__ import annotations

import hashlib


def is_heldout(key: str, fraction: float) -> bool:
    """Whether `key` falls in the held-out share `fraction`. Raises ValueError outside [0, 1]."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"heldout fraction must be within [0, 1], got {fraction}")
    point = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return point < fraction
