"""Classification statistics and bootstrap intervals against independent computations (scipy, loops)."""

import numpy as np
import pytest
from scipy import stats

from nx_dagster.explain.classification import (
    auroc, balanced_accuracy_interval, confusion, correlation_interval, resample_counts)


def test_confusion_balanced_accuracy_and_f1():
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    said = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
    c = confusion(truth, said)
    assert (c.true_positive, c.false_positive, c.true_negative, c.false_negative) == (2, 1, 4, 1)
    assert (c.n_positive, c.n_negative) == (3, 5)
    assert c.balanced_accuracy == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert c.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert confusion(truth, truth).balanced_accuracy == 1.0
    assert confusion(truth, ~truth).balanced_accuracy == 0.0
    assert confusion(np.ones(4, bool), np.ones(4, bool)).balanced_accuracy is None  # no negative excerpt
    assert confusion(np.zeros(4, bool), np.zeros(4, bool)).f1 is None


def test_auroc_is_the_mann_whitney_statistic_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = rng.random(40) < 0.4
        prob = np.round(rng.random(40), 1)  # many ties
        u = stats.mannwhitneyu(prob[truth], prob[~truth]).statistic
        assert auroc(truth, prob) == pytest.approx(u / (truth.sum() * (~truth).sum()))
    assert auroc(np.array([1, 1, 0, 0], bool), np.array([0.9, 0.8, 0.2, 0.1])) == 1.0
    assert auroc(np.array([1, 1], bool), np.array([0.9, 0.8])) is None
    assert auroc(np.array([1, 0], bool), np.array([np.nan, 0.8])) is None


def test_intervals_equal_a_loop_over_the_same_resamples():
    rng = np.random.default_rng(1)
    truth = rng.random(60) < 0.5
    said = np.where(rng.random(60) < 0.8, truth, ~truth)
    counts = resample_counts(60, seed=7)
    loop = []
    for row in counts:
        idx = np.repeat(np.arange(60), row)
        loop.append(confusion(truth[idx], said[idx]).balanced_accuracy)
    low, high = balanced_accuracy_interval(truth, said, seed=7)
    assert (low, high) == pytest.approx(tuple(np.percentile(loop, [2.5, 97.5])))
    assert low < confusion(truth, said).balanced_accuracy < high

    true = [rng.random(16) for _ in range(30)]
    expected = [t + rng.normal(0, 0.3, 16) for t in true]
    loop = []
    for row in resample_counts(30, seed=3):
        idx = np.repeat(np.arange(30), row)
        loop.append(stats.pearsonr(np.concatenate([true[i] for i in idx]),
                                   np.concatenate([expected[i] for i in idx])).statistic)
    low, high = correlation_interval(true, expected, seed=3)
    assert (low, high) == pytest.approx(tuple(np.percentile(loop, [2.5, 97.5])), rel=1e-9)
    point = stats.pearsonr(np.concatenate(true), np.concatenate(expected)).statistic
    assert low < point < high
    assert correlation_interval(true, expected, seed=4) != (low, high)  # the seed decides the resamples


def test_intervals_without_enough_data_are_missing_not_numbers():
    assert balanced_accuracy_interval(np.ones(5, bool), np.ones(5, bool), seed=0) == (None, None)
    assert correlation_interval([np.zeros(8)] * 4, [np.ones(8)] * 4, seed=0) == (None, None)
    assert correlation_interval([], [], seed=0) == (None, None)
