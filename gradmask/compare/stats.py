"""Statistics for comparing runs: per-group summaries and Welch's t interval of a difference of means.

Seeds are few (3 to 5), so the interval uses Student's t with the Welch-Satterthwaite degrees of
freedom (variances are not assumed equal): ``scipy.stats.ttest_ind(a, b, equal_var=False)``'s
``confidence_interval``. With fewer than two runs in a group no variance can be
estimated: the bounds are NaN and the report says "not established (n < 2)".
"""
from __future__ import annotations

import math
from typing import Iterable, NamedTuple

import numpy as np
from scipy import stats as _scipy_stats


class Summary(NamedTuple):
    """Mean, sample standard deviation (ddof=1; NaN when n < 2) and count of a group."""
    mean: float
    std: float
    n: int


class DiffInterval(NamedTuple):
    """``mean(a) - mean(b)`` and its confidence bounds (NaN when either group has n < 2)."""
    diff: float
    low: float
    high: float


def _as_array(values: Iterable[float], name: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite numbers, got {arr.tolist()}")
    return arr


def summarize(values: Iterable[float]) -> Summary:
    """``(mean, std, n)`` with the sample standard deviation (ddof=1).

    ``n == 0`` gives NaN mean and std; ``n == 1`` gives the value and a NaN std.
    """
    arr = _as_array(values, "values")
    n = int(arr.size)
    mean = float(arr.mean()) if n else math.nan
    std = float(arr.std(ddof=1)) if n >= 2 else math.nan
    return Summary(mean, std, n)


def welch_dof(a: Iterable[float], b: Iterable[float]) -> float:
    """Welch-Satterthwaite degrees of freedom; NaN if either group has n < 2 or both variances are 0."""
    a = _as_array(a, "a")
    b = _as_array(b, "b")
    if a.size < 2 or b.size < 2:
        return math.nan
    va = a.var(ddof=1) / a.size
    vb = b.var(ddof=1) / b.size
    denom = va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1)
    if denom == 0.0:
        return math.nan
    return float((va + vb) ** 2 / denom)


def diff_confidence_interval(a: Iterable[float], b: Iterable[float], level: float = 0.95) -> DiffInterval:
    """Welch's t interval of ``mean(a) - mean(b)`` at confidence ``level``.

    Returns ``(diff, low, high)``. With n < 2 in either group the bounds are NaN (the difference is
    then not established; the mean difference is still returned when both groups are non-empty).
    When both groups have zero spread the interval collapses to the difference itself.
    """
    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level}")
    a = _as_array(a, "a")
    b = _as_array(b, "b")
    diff = float(a.mean() - b.mean()) if a.size and b.size else math.nan
    if a.size < 2 or b.size < 2:
        return DiffInterval(diff, math.nan, math.nan)
    if a.var(ddof=1) == 0.0 and b.var(ddof=1) == 0.0:
        return DiffInterval(diff, diff, diff)  # scipy gives NaN bounds here
    ci = _scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence_level=level)
    return DiffInterval(diff, float(ci.low), float(ci.high))


def interval_contains_zero(ci: DiffInterval) -> bool | None:
    """True / False whether ``[low, high]`` contains 0; None when the interval is undefined (NaN)."""
    if math.isnan(ci.low) or math.isnan(ci.high):
        return None
    return ci.low <= 0.0 <= ci.high
