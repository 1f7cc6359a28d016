"""Scores of one explanation, straight from the definitions (PRODUCT.md §4). The batch scorer in
`batch_scoring.py` computes the same numbers vectorized; tests hold the two together.

On the valid split (top + random records), tokens pooled over all scored sequences (never averaged per
sequence), t = true activations, s = simulated expected values (0–10 scale):
- `ev_correlation` = Pearson(t, s); `ev_correlation_top` / `_random` on the top / random records only.
- p = a·s + b, the linear calibration fitted by least squares of t on s over the calibration split
  (top + random), as in the original method; a = cov(t, s)/var(s), or 0 when s is constant there.
  With `calibrate=False`, or no calibration records, p = s.
- `rsquared` = 1 − mean((t − p)²)/mean(t²); `absolute_dev_explained` = 1 − mean(|t − p|)/mean(|t|).
  Both are NULL when t is constant over the valid split (any constant, 0 included): a constant neuron
  has nothing to explain, and a constant p would otherwise score 1.0 whatever the explanation says.
- `calibrated_rsquared` is always NULL: it used to repeat `rsquared` (which is already of the calibrated
  simulation); the column stays in the SQL contract, deprecated.
A metric that is undefined (a constant series, no tokens) is NULL and `failure_reason` names it.

Failed sequences: the metrics are computed from the sequences that succeeded when at least
`MIN_SUCCEEDED` (80 %) of the sequences of each of valid-top, valid-random and calibration succeeded
(so a group of 4 or fewer may lose none); otherwise every metric is NULL and `failure_reason` says how
many failed and why the first did. `n_sequences` / `n_failed_sequences` count the valid and calibration
sequences and the failed ones; `n_tokens` counts the valid tokens the metrics were computed from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nx_dagster.vocab import CALIBRATION_SPLIT, RANDOM, SCORED_SPLIT, SIMULATED_KINDS, TOP

METRICS = ("ev_correlation", "ev_correlation_top", "ev_correlation_random", "rsquared", "absolute_dev_explained")
MIN_SUCCEEDED = 0.8  # share of each group's sequences (valid-top, valid-random, calibration) that must succeed
CONSTANT_TRUTH = "rsquared, absolute_dev_explained: undefined (true activations are constant)"


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
    n_sequences: int = 0
    n_failed_sequences: int = 0


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


def _failed(q: ScoredSequence) -> bool:
    return q.expected is None or bool(q.failure_reason) or len(q.expected) != len(q.true)


def too_few_succeeded(n: int, n_failed: int) -> bool:
    """Whether a group of n sequences with n_failed failures is below MIN_SUCCEEDED."""
    return n > 0 and (n - n_failed) < MIN_SUCCEEDED * n


def score_sequences(sequences: Sequence[ScoredSequence], calibrate: bool = True) -> Score:
    """Score one explanation from its simulated valid (and calibration) sequences. Others are ignored."""
    valid = [q for q in sequences if q.split == SCORED_SPLIT and q.kind in SIMULATED_KINDS]
    cal = [q for q in sequences if q.split == CALIBRATION_SPLIT and q.kind in SIMULATED_KINDS]
    failed = [q for q in valid + cal if _failed(q)]
    counts = (len(valid) + len(cal), len(failed))
    groups = ([q for q in valid if q.kind == TOP], [q for q in valid if q.kind == RANDOM], cal)
    valid, cal = [q for q in valid if not _failed(q)], [q for q in cal if not _failed(q)]
    n_tokens = int(sum(len(q.true) for q in valid))
    if any(too_few_succeeded(len(g), sum(map(_failed, g))) for g in groups):
        first = failed[0].failure_reason or "simulation length differs from the sequence"
        reason = f"simulation failed for {len(failed)} of {counts[0]} sequences: {first}"
        return Score(None, None, None, None, None, None, n_tokens, reason, *counts)
    t, s = _concat(valid, "true"), _concat(valid, "expected")
    values: dict[str, float] = {}
    reasons: list[str] = []
    for name, subset in (("ev_correlation", valid), ("ev_correlation_top", [q for q in valid if q.kind == TOP]),
                         ("ev_correlation_random", [q for q in valid if q.kind == RANDOM])):
        ts, ss = _concat(subset, "true"), _concat(subset, "expected")
        values[name] = pearson(ts, ss)
        why = _why_undefined(ts, ss)
        if why:
            reasons.append(f"{name}: undefined ({why})")
    calibrated = calibrate and len(cal) > 0 and sum(len(q.true) for q in cal) > 0
    a, b = fit_calibration(_concat(cal, "true"), _concat(cal, "expected")) if calibrated else (1.0, 0.0)
    p = a * s + b
    if t.size == 0 or t.max() == t.min():
        values["rsquared"] = values["absolute_dev_explained"] = float("nan")
        reasons.append(CONSTANT_TRUTH if t.size else "rsquared, absolute_dev_explained: undefined (no tokens)")
    else:
        values["rsquared"] = float(1 - np.mean((t - p) ** 2) / np.mean(t ** 2))
        values["absolute_dev_explained"] = float(1 - np.mean(np.abs(t - p)) / np.mean(np.abs(t)))
    clean = {k: (None if np.isnan(v) else v) for k, v in values.items()}
    return Score(clean["ev_correlation"], clean["ev_correlation_top"], clean["ev_correlation_random"],
                 clean["rsquared"], clean["absolute_dev_explained"], None, n_tokens, "; ".join(reasons) or None,
                 *counts)
