"""The bootstrap intervals against a direct computation with the same seed, and their behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from magiceraser.evaluation import bootstrap as B


def _direct(values, resamples, seed, confidence):
    """The module docstring's algorithm, written out independently."""
    x = np.asarray(values, np.float64)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    means = np.array([x[row].sum() / len(x) for row in idx])
    tail = 100 * (1 - confidence) / 2
    return x.mean(), np.percentile(means, tail), np.percentile(means, 100 - tail)


def test_interval_equals_the_direct_computation_with_the_same_seed():
    values = np.random.default_rng(3).normal(30.0, 2.0, 57)
    iv = B.bootstrap_mean(values, resamples=500, seed=11, confidence=0.9)
    mean, low, high = _direct(values, 500, 11, 0.9)
    assert iv.n == 57
    assert iv.value == pytest.approx(mean, abs=1e-12)
    assert iv.low == pytest.approx(low, abs=1e-12) and iv.high == pytest.approx(high, abs=1e-12)
    other = B.bootstrap_mean(values, resamples=500, seed=12, confidence=0.9)
    assert (other.low, other.high) != (iv.low, iv.high)  # the seed is used


def test_chunked_resampling_draws_the_same_resamples(monkeypatch):
    values = np.random.default_rng(4).uniform(0, 1, 33)
    whole = B.bootstrap_mean(values, 301, 5)
    monkeypatch.setattr(B, "_CHUNK", 33 * 7)  # 7 resamples per chunk, 43 chunks
    assert B.bootstrap_mean(values, 301, 5) == whole


def test_interval_contains_the_mean_and_narrows_with_more_images():
    rng = np.random.default_rng(0)
    small = B.bootstrap_mean(rng.normal(0, 1, 20), 1000, 0)
    large = B.bootstrap_mean(rng.normal(0, 1, 2000), 1000, 0)
    assert small.contains(small.value) and large.contains(large.value)
    assert (large.high - large.low) < (small.high - small.low) / 4  # ~ 1/sqrt(n): 10x narrower
    # 95% interval of a N(0,1) mean over 2000 images: +-1.96/sqrt(2000) = +-0.044
    assert 0.06 < large.high - large.low < 0.12


def test_identical_methods_differ_by_an_interval_containing_zero():
    a = np.random.default_rng(1).normal(25, 3, 80)
    diff = B.paired_difference(a, a.copy(), 1000, 0)
    assert diff.value == 0 and diff.contains(0.0) and diff.low == diff.high == 0
    shifted = B.paired_difference(a + 0.5 + np.random.default_rng(2).normal(0, 0.1, 80), a, 1000, 0)
    assert not shifted.contains(0.0) and shifted.contains(0.5)  # a real, consistent gain is detected


def test_paired_is_tighter_than_unpaired_on_correlated_methods():
    base = np.random.default_rng(5).normal(25, 4, 100)  # images differ a lot in difficulty
    better = base + 0.3 + np.random.default_rng(6).normal(0, 0.2, 100)
    paired = B.paired_difference(better, base, 1000, 0)
    a, b = B.bootstrap_mean(better, 1000, 0), B.bootstrap_mean(base, 1000, 1)
    assert paired.low > 0 and a.low < b.high  # the separate intervals overlap; the paired one excludes 0


def test_set_statistic_recomputed_on_each_resample():
    x = np.random.default_rng(7).uniform(0, 10, 40)
    iv = B.bootstrap_statistic(40, lambda idx: float(np.median(x[idx])), 300, 2)
    idx = np.random.default_rng(2).integers(0, 40, size=(300, 40))
    medians = [np.median(x[row]) for row in idx]
    assert iv.value == np.median(x)
    assert iv.low == pytest.approx(np.percentile(medians, 2.5)) and iv.high == pytest.approx(np.percentile(medians, 97.5))


def test_edge_cases():
    assert B.bootstrap_mean([], 100, 0) is None and B.bootstrap_statistic(0, len, 100, 0) is None
    one = B.bootstrap_mean([3.5], 100, 0)
    assert (one.value, one.low, one.high, one.n) == (3.5, 3.5, 3.5, 1)
    with pytest.raises(ValueError, match="confidence"):
        B.bootstrap_mean([1.0, 2.0], 100, 0, confidence=1.5)
    with pytest.raises(ValueError, match="resamples"):
        B.bootstrap_mean([1.0, 2.0], 0, 0)
    with pytest.raises(ValueError, match="finite"):
        B.bootstrap_mean([1.0, float("nan")], 10, 0)
    with pytest.raises(ValueError, match="aligned"):
        B.paired_difference([1.0, 2.0], [1.0], 10, 0)
