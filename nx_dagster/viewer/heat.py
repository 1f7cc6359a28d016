"""Token strings made visible, numbers shown, and activation strength as one of ten levels (shared by
the card and the pages).

Levels: round(9 · a / scale) clipped to 0-9, where `scale` is the neuron's largest activation over both
GELU lineages (so pre- and post-fix share one colour scale); level 0 (below 1/18 of the scale, or not
a number) is drawn as plain text.
"""

from __future__ import annotations

import math
from typing import Sequence

LEVELS = 10
# Whitespace that would otherwise vanish or break the line, shown as a visible mark.
_MARKS = str.maketrans({"\n": "↵", "\r": "␍", "\t": "⇥"})


def visible(token: str) -> str:
    """The token with newlines/tabs as marks (spaces are kept; the pages keep them with pre-wrap)."""
    return token.translate(_MARKS)


def level(value: float | None, scale: float) -> int:
    if value is None or not math.isfinite(value) or value <= 0 or scale <= 0:
        return 0
    return min(LEVELS - 1, round((LEVELS - 1) * value / scale))


def levels(values: Sequence[float | None], scale: float) -> list[int]:
    return [level(v, scale) for v in values]


def number(x: float | None, fmt: str = "{:.3f}") -> str:
    """A number for display; NULL as an em dash."""
    return "—" if x is None else fmt.format(x)
