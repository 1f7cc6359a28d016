"""Parse the range lists users type: '0,2-5' -> [0, 2, 3, 4, 5]."""

from __future__ import annotations

from nx_dagster.errors import NxInputError


def parse_ranges(text: str | None, what: str, upper: int | None = None) -> list[int] | None:
    """None/'' -> None (meaning all). Bounds are inclusive; `upper` is exclusive when given."""
    if text is None or not str(text).strip():
        return None
    out: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise NxInputError(f"{what} {text!r}", f"cannot read {part!r}", "write numbers and ranges like 0,2-5") from None
        if a < 0 or b < a:
            raise NxInputError(f"{what} {text!r}", f"{part!r} is not a valid range", "write ranges low-high, like 2-5")
        if upper is not None and b >= upper:
            raise NxInputError(f"{what} {text!r}", f"{b} is out of range (0-{upper - 1})", f"use {what} below {upper}")
        out.update(range(a, b + 1))
    return sorted(out)


def contiguous_runs(values: list[int]) -> list[range]:
    runs: list[range] = []
    for v in sorted(values):
        if runs and runs[-1].stop == v:
            runs[-1] = range(runs[-1].start, v + 1)
        else:
            runs.append(range(v, v + 1))
    return runs
