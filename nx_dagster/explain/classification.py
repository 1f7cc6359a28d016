"""Statistics of a classification score and bootstrap intervals for scores.

A detection or fuzzing judge labels excerpts (does the neuron fire here / does the highlighting fit);
the truth is whether each excerpt was drawn from the neuron's activating records. From the pairs:
- `Confusion`: true/false positives and negatives, balanced accuracy (mean of the recall of each class:
  0.5 is chance whatever the class sizes) and F1 (of the positive class).
- `auroc`: the area under the ROC curve of a judge's probabilities, computed as the Mann-Whitney
  statistic (ties count one half), so it needs no threshold.

Intervals: a percentile bootstrap over the scored units (excerpts for a classification score, sequences
for a simulation score), resampled with a seeded generator, so that a stored interval can be recomputed
from its recorded seed. Each resample is a row of multinomial counts over the units; a statistic is then
a function of count-weighted sums, computed for every resample at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 1000  # bootstrap resamples per interval
LEVEL = 0.95  # the interval's coverage


@dataclass(frozen=True)
class Confusion:
    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int

    @property
    def n_positive(self) -> int:
        return self.true_positive + self.false_negative

    @property
    def n_negative(self) -> int:
        return self.true_negative + self.false_positive

    @property
    def balanced_accuracy(self) -> float | None:
        """Mean recall of the two classes; None when a class has no excerpt."""
        if not self.n_positive or not self.n_negative:
            return None
        return (self.true_positive / self.n_positive + self.true_negative / self.n_negative) / 2

    @property
    def f1(self) -> float | None:
        """F1 of the positive class; None when there is no positive excerpt and no positive answer."""
        denominator = 2 * self.true_positive + self.false_positive + self.false_negative
        return 2 * self.true_positive / denominator if denominator else None


def confusion(truth: np.ndarray, said: np.ndarray) -> Confusion:
    """Counts of (truth, answer) pairs; both boolean arrays of one length."""
    truth, said = np.asarray(truth, bool), np.asarray(said, bool)
    return Confusion(int(np.sum(truth & said)), int(np.sum(~truth & said)), int(np.sum(~truth & ~said)),
                     int(np.sum(truth & ~said)))


def auroc(truth: np.ndarray, probability: np.ndarray) -> float | None:
    """Probability that a random positive excerpt gets a higher probability than a random negative one
    (ties count one half); None when a class is empty or a probability is not finite."""
    truth, probability = np.asarray(truth, bool), np.asarray(probability, np.float64)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if not n_pos or not n_neg or not np.all(np.isfinite(probability)):
        return None
    order = np.argsort(probability, kind="stable")
    ranks = np.empty(len(probability))
    ranks[order] = np.arange(1, len(probability) + 1)
    values = probability[order]  # average the ranks of tied values
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends):
        if e - s > 1:
            ranks[order[s:e]] = (s + 1 + e) / 2
    u = ranks[truth].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def resample_counts(n_units: int, seed: int, n_resamples: int = N_RESAMPLES) -> np.ndarray:
    """[n_resamples, n_units] counts: how often each unit is drawn in each resample (n_units draws)."""
    draws = np.random.default_rng(seed).integers(0, n_units, size=(n_resamples, n_units))
    draws += np.arange(n_resamples)[:, None] * n_units  # one bincount over all resamples
    return np.bincount(draws.ravel(), minlength=n_resamples * n_units).reshape(n_resamples, n_units)


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float | None, float | None]:
    """The central `level` interval of the finite resampled values; (None, None) when fewer than half of
    the resamples give a value (a class or a variance missing in most of them)."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    if len(finite) < len(values) / 2 or not len(finite):
        return None, None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def balanced_accuracy_interval(truth: np.ndarray, said: np.ndarray, seed: int,
                               n_resamples: int = N_RESAMPLES) -> tuple[float | None, float | None]:
    """Bootstrap interval of the balanced accuracy, resampling the judged excerpts."""
    truth, said = np.asarray(truth, bool), np.asarray(said, bool)
    if not len(truth):
        return None, None
    w = resample_counts(len(truth), seed, n_resamples).astype(np.float64)
    tp, fn = w @ (truth & said), w @ (truth & ~said)
    tn, fp = w @ (~truth & ~said), w @ (~truth & said)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (tp / (tp + fn) + tn / (tn + fp)) / 2
    return percentile_interval(values)


def correlation_interval(true: list[np.ndarray], expected: list[np.ndarray], seed: int,
                         n_resamples: int = N_RESAMPLES) -> tuple[float | None, float | None]:
    """Bootstrap interval of the Pearson correlation pooled over every token of the scored sequences
    (`ev_correlation`), resampling whole sequences: per sequence the token count and the sums of t, p,
    t², p² and t·p, weighted by each resample's counts."""
    if not true:
        return None, None
    sums = np.array([[len(t), t.sum(), p.sum(), (t * t).sum(), (p * p).sum(), (t * p).sum()]
                     for t, p in ((np.asarray(t, np.float64), np.asarray(p, np.float64))
                                  for t, p in zip(true, expected))])
    n, st, sp, stt, spp, stp = (resample_counts(len(true), seed, n_resamples) @ sums).T
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = stp - st * sp / n
        var_t, var_p = stt - st * st / n, spp - sp * sp / n
        values = cov / np.sqrt(var_t * var_p)
    values[~((var_t > 0) & (var_p > 0))] = np.nan
    return percentile_interval(values)
