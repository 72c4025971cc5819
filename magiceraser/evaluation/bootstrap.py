"""Uncertainty of the table's numbers: percentile bootstrap over images, pure functions.

Removal papers report means over 70 to 200 pairs with no interval; a 0.3 dB difference on that many
images may be noise. Every cell of ``results.md`` is ``mean [low, high]`` and every method is compared
with a baseline by a paired bootstrap over the images both scored.

The algorithm, written here once so that a reader can reproduce any interval by hand:

* ``idx = numpy.random.default_rng(seed).integers(0, n, size=(resamples, n))``: each row is one
  resample of the n images, with replacement;
* the statistic of every resample (the mean of ``values[idx]`` row-wise, or any set statistic such
  as FID recomputed on the resampled images);
* the interval is ``numpy.percentile(stats, [50 (1 - c), 50 (1 + c)])`` (c = confidence, linear
  interpolation), and the point estimate is the statistic of the images themselves.

The same seed gives the same resamples for every metric with the same n, so a method and its
baseline are resampled on the same images (the paired bootstrap resamples the per-image
differences ``a - b``, which is the same thing for the mean).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "bootstrap_mean", "bootstrap_statistic", "paired_difference", "resample_indices"]

_CHUNK = 1 << 22  # resample indices held at once (int64: 32 MiB), whatever the number of images


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval over ``n`` images."""

    value: float
    low: float
    high: float
    n: int

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def _check(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples: must be >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """The ``(resamples, n)`` image indices of the bootstrap (see the module docstring)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentiles(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_mean(values: Sequence[float] | np.ndarray, resamples: int = 1000, seed: int = 0,
                   confidence: float = 0.95) -> Interval | None:
    """Mean of ``values`` with its percentile-bootstrap interval; None for no values."""
    _check(resamples, confidence)
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return None
    if not np.isfinite(x).all():
        raise ValueError("bootstrap_mean needs finite values (drop missing ones first)")
    n = x.size
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // n)
    stats = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, rows):  # same stream as one integers(0, n, (resamples, n)) call
        count = min(rows, resamples - start)
        stats[start : start + count] = x[rng.integers(0, n, size=(count, n))].mean(axis=1)
    low, high = _percentiles(stats, confidence)
    return Interval(float(x.mean()), low, high, n)


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, resamples: int = 1000,
                      seed: int = 0, confidence: float = 0.95) -> Interval | None:
    """Mean of ``a - b`` over the same images (aligned arrays) with its paired-bootstrap interval."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_difference needs aligned values, got {a.size} and {b.size}")
    return bootstrap_mean(a - b, resamples, seed, confidence)


def bootstrap_statistic(n: int, statistic: Callable[[np.ndarray], float], resamples: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> Interval | None:
    """A set statistic (e.g. FID) over ``n`` images with its interval: ``statistic(indices)`` is
    evaluated on ``arange(n)`` for the point estimate and on each resample's indices."""
    _check(resamples, confidence)
    if n == 0:
        return None
    point = float(statistic(np.arange(n)))
    idx = resample_indices(n, resamples, seed)
    stats = np.array([statistic(row) for row in idx], dtype=np.float64)
    low, high = _percentiles(stats, confidence)
    return Interval(point, low, high, n)
