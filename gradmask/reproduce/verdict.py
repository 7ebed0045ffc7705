"""The one-line verdict of every claim, computed from the numbers (never written by hand).

A claim "A is larger than B" is tested with a 95% confidence interval of ``A - B`` (Welch's t over
seeds, or a one-sample t interval of paired differences): it **holds** when the whole interval is
above ``margin``, it **does not hold** when the whole interval is below it, and it is **not
established at this scale** otherwise (including when fewer than two values exist).

A claim of several parts (Table 2: two accuracy comparisons and a cost) gets one headline: the
parts' verdict when they all agree, else **mixed**, followed by the verdict of each kind of part
(``"mixed: accuracy not established at this scale; cost does not hold"``), so that no part
overrules the others without saying so (:func:`headline`).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy import stats as _scipy_stats

from ..compare import DiffInterval, diff_confidence_interval

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
NOT_ESTABLISHED = "not established at this scale"
MIXED = "mixed"
CI_LEVEL = 0.95


def mean_interval(values: Iterable[float], level: float = CI_LEVEL) -> DiffInterval:
    """Student's t interval of the mean of ``values`` (NaN bounds with fewer than two finite values)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return DiffInterval(math.nan, math.nan, math.nan)
    mean = float(arr.mean())
    if arr.size < 2:
        return DiffInterval(mean, math.nan, math.nan)
    se = float(arr.std(ddof=1)) / math.sqrt(arr.size)
    half = float(_scipy_stats.t.ppf(0.5 + level / 2.0, arr.size - 1)) * se
    return DiffInterval(mean, mean - half, mean + half)


def difference_interval(a: Iterable[float], b: Iterable[float], level: float = CI_LEVEL) -> DiffInterval:
    """Welch's t interval of ``mean(a) - mean(b)`` over independent runs (non-finite values dropped)."""
    a = [v for v in a if v is not None and math.isfinite(v)]
    b = [v for v in b if v is not None and math.isfinite(v)]
    return diff_confidence_interval(a, b, level)


def verdict(interval: DiffInterval, margin: float = 0.0) -> str:
    """``holds`` if ``low > margin``, ``does not hold`` if ``high < margin``, else not established."""
    if math.isnan(interval.low) or math.isnan(interval.high):
        return NOT_ESTABLISHED
    if interval.low > margin:
        return HOLDS
    if interval.high < margin:
        return DOES_NOT_HOLD
    return NOT_ESTABLISHED


def combine(verdicts: Iterable[str]) -> str:
    """One verdict for comparisons of one kind: theirs when they all agree, else ``mixed``; not
    established when there is none."""
    distinct = set(verdicts)
    if not distinct:
        return NOT_ESTABLISHED
    return distinct.pop() if len(distinct) == 1 else MIXED


def headline(parts: Iterable[tuple[str, str]]) -> str:
    """The headline of a claim from its ``(kind, verdict)`` parts (kinds such as "accuracy", "cost"):
    the verdict when every part agrees, else ``"mixed: <kind> <verdict>; ..."`` in the kinds' first
    order (each kind's verdict by :func:`combine`)."""
    parts = list(parts)
    overall = combine(v for _, v in parts)
    if overall != MIXED:
        return overall
    kinds = list(dict.fromkeys(k for k, _ in parts))
    return f"{MIXED}: " + "; ".join(f"{k} {combine(v for kk, v in parts if kk == k)}" for k in kinds)
