"""Scores of one explanation, straight from the definitions (PRODUCT.md §4). The batch scorer in
`batch_scoring.py` computes the same numbers vectorized; tests hold the two together.

On the valid split (top + random records), tokens pooled over all scored sequences (never averaged per
sequence), t = true activations, s = simulated expected values (0–10 scale):
- `ev_correlation` = Pearson(t, s); `ev_correlation_top` / `_random` on the top / random records only.
- p = a·s + b, the linear calibration fitted by least squares of t on s over the calibration split
  (top + random), as in the original method; a = cov(t, s)/var(s), or 0 when s is constant there.
  With `calibrate=False`, or no calibration records, p = s.
- `rsquared` = 1 − mean((t − p)²)/mean(t²); `absolute_dev_explained` = 1 − mean(|t − p|)/mean(|t|).
- `calibrated_rsquared` = `rsquared` when p was calibrated, NULL when it was not.
A metric that is undefined (a constant series, no tokens, all-zero truth) is NULL and `failure_reason`
names it; a failed simulation of any valid or calibration sequence makes every metric NULL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

METRICS = ("ev_correlation", "ev_correlation_top", "ev_correlation_random", "rsquared", "absolute_dev_explained")


@dataclass(frozen=True)
class Score:
    ev_correlation: float | None
    ev_correlation_top: float | None
    ev_correlation_random: float | None
    rsquared: float | None
    absolute_dev_explained: float | None
    calibrated_rsquared: float | None
    n_tokens: int
    failure_reason: str | None


@dataclass(frozen=True)
class ScoredSequence:
    """One simulated sequence: its kind ('top'/'random'), split, truth and simulation (None = failed)."""

    kind: str
    split: str
    true: Sequence[float]
    expected: Sequence[float] | None
    failure_reason: str | None = None


def _why_undefined(t: np.ndarray, s: np.ndarray) -> str | None:
    if t.size == 0:
        return "no tokens"
    if t.max() == t.min():
        return "true activations are constant"
    if s.max() == s.min():
        return "simulated activations are constant"
    return None


def pearson(t: np.ndarray, s: np.ndarray) -> float:
    """Pearson correlation; NaN when either series is constant or empty."""
    if _why_undefined(t, s):
        return float("nan")
    t, s = t - t.mean(), s - s.mean()
    return float((t * s).sum() / np.sqrt((t * t).sum() * (s * s).sum()))


def fit_calibration(t: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """Least-squares a, b of t ≈ a·s + b (a = 0 when s is constant)."""
    ds = s - s.mean()
    var = float((ds * ds).sum())
    a = float((ds * (t - t.mean())).sum() / var) if s.max() > s.min() else 0.0
    return a, float(t.mean() - a * s.mean())


def _concat(seqs: Sequence[ScoredSequence], attr: str) -> np.ndarray:
    parts = [np.asarray(getattr(q, attr), dtype=np.float64) for q in seqs]
    return np.concatenate(parts) if parts else np.zeros(0)


def score_sequences(sequences: Sequence[ScoredSequence], calibrate: bool = True) -> Score:
    """Score one explanation from its simulated valid (and calibration) sequences. Others are ignored."""
    valid = [q for q in sequences if q.split == "valid" and q.kind in ("top", "random")]
    cal = [q for q in sequences if q.split == "calibration" and q.kind in ("top", "random")]
    n_tokens = int(sum(len(q.true) for q in valid))
    failed = [q for q in valid + cal if q.expected is None or q.failure_reason or len(q.expected) != len(q.true)]
    if failed:
        first = failed[0].failure_reason or "simulation length differs from the sequence"
        reason = f"simulation failed for {len(failed)} of {len(valid) + len(cal)} sequences: {first}"
        return Score(None, None, None, None, None, None, n_tokens, reason)
    t, s = _concat(valid, "true"), _concat(valid, "expected")
    values: dict[str, float] = {}
    reasons: list[str] = []
    for name, subset in (("ev_correlation", valid), ("ev_correlation_top", [q for q in valid if q.kind == "top"]),
                         ("ev_correlation_random", [q for q in valid if q.kind == "random"])):
        ts, ss = _concat(subset, "true"), _concat(subset, "expected")
        values[name] = pearson(ts, ss)
        why = _why_undefined(ts, ss)
        if why:
            reasons.append(f"{name}: undefined ({why})")
    calibrated = calibrate and len(cal) > 0 and sum(len(q.true) for q in cal) > 0
    a, b = fit_calibration(_concat(cal, "true"), _concat(cal, "expected")) if calibrated else (1.0, 0.0)
    p = a * s + b
    if t.size == 0 or not np.any(t != 0):
        values["rsquared"] = values["absolute_dev_explained"] = float("nan")
        reasons.append("rsquared, absolute_dev_explained: undefined (true activations are all 0 or absent)")
    else:
        values["rsquared"] = float(1 - np.mean((t - p) ** 2) / np.mean(t ** 2))
        values["absolute_dev_explained"] = float(1 - np.mean(np.abs(t - p)) / np.mean(np.abs(t)))
    clean = {k: (None if np.isnan(v) else v) for k, v in values.items()}
    return Score(clean["ev_correlation"], clean["ev_correlation_top"], clean["ev_correlation_random"],
                 clean["rsquared"], clean["absolute_dev_explained"], clean["rsquared"] if calibrated else None,
                 n_tokens, "; ".join(reasons) or None)
