"""Token strings made visible, and activation strength as one of ten levels (shared by card and pages).

Levels: 0 for activations at or below 0, else ceil(9 · a / scale) clipped to 1-9, where `scale` is the
neuron's largest activation over both GELU lineages (so pre- and post-fix share one colour scale).
"""

from __future__ import annotations

import math
from typing import Sequence

LEVELS = 10
# Whitespace that would otherwise vanish or break the line, shown as a visible mark.
_VISIBLE = {"\n": "↵", "\r": "␍", "\t": "⇥"}


def visible(token: str) -> str:
    """The token with newlines/tabs as marks (spaces are kept; the pages keep them with pre-wrap)."""
    return "".join(_VISIBLE.get(c, c) for c in token) if any(c in token for c in _VISIBLE) else token


def level(value: float | None, scale: float) -> int:
    if value is None or not math.isfinite(value) or value <= 0 or scale <= 0:
        return 0
    return max(1, min(LEVELS - 1, math.ceil((LEVELS - 1) * value / scale)))


def levels(values: Sequence[float | None], scale: float) -> list[int]:
    return [level(v, scale) for v in values]
