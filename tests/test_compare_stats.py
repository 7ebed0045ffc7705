"""gradmask.compare.stats against hand-computed values and scipy."""
import math

import numpy as np
import pytest
from scipy import stats as st

from gradmask.compare.stats import diff_confidence_interval, interval_contains_zero, summarize, welch_dof

T_975_4 = 2.7764451051977987   # Student t table, 97.5% quantile, 4 degrees of freedom


def test_summarize_hand_values():
    s = summarize([70.0, 72.0, 74.0])
    assert s.n == 3 and s.mean == pytest.approx(72.0) and s.std == pytest.approx(2.0)   # ddof=1
    one = summarize([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.std)
    empty = summarize([])
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.std)
    with pytest.raises(ValueError, match="finite"):
        summarize([1.0, float("nan")])


def test_welch_interval_hand_values_equal_variances():
    # equal n and variances: dof = 2(n-1) = 4, se = sqrt(1/3 + 1/3)
    assert welch_dof([1, 2, 3], [2, 3, 4]) == pytest.approx(4.0)
    d, lo, hi = diff_confidence_interval([1, 2, 3], [2, 3, 4])
    half = T_975_4 * math.sqrt(2 / 3)
    assert d == pytest.approx(-1.0)
    assert lo == pytest.approx(-1.0 - half, abs=1e-9) and hi == pytest.approx(-1.0 + half, abs=1e-9)


def test_welch_dof_hand_value_unequal():
    # var a = 1 (n 3), var b = 5/3 (n 4): se^2 = 3/4, dof = (3/4)^2 / ((1/3)^2/2 + (5/12)^2/3) = 243/49
    assert welch_dof([1, 2, 3], [4, 5, 6, 7]) == pytest.approx(243 / 49)


@pytest.mark.parametrize("a, b, level", [
    ([1, 2, 3], [4, 5, 6, 7], 0.95),
    ([71.2, 72.9, 70.4, 73.3], [74.1, 73.2, 76.0], 0.95),
    ([0.1, 0.4, 0.35, 0.2, 0.25], [0.3, 0.31, 0.29], 0.90),
])
def test_welch_interval_matches_the_formula(a, b, level):
    """The interval (scipy's ttest_ind(equal_var=False).confidence_interval) against the textbook
    formula: diff +- t(level, Welch-Satterthwaite dof) * sqrt(var_a / n_a + var_b / n_b)."""
    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    va, vb = a_.var(ddof=1) / a_.size, b_.var(ddof=1) / b_.size
    dof = (va + vb) ** 2 / (va ** 2 / (a_.size - 1) + vb ** 2 / (b_.size - 1))
    half = st.t.ppf(0.5 + level / 2, dof) * math.sqrt(va + vb)
    d, lo, hi = diff_confidence_interval(a, b, level)
    assert welch_dof(a, b) == pytest.approx(dof, rel=1e-12)
    assert d == pytest.approx(np.mean(a) - np.mean(b))
    assert lo == pytest.approx(d - half, rel=1e-10) and hi == pytest.approx(d + half, rel=1e-10)


def test_small_groups_give_nan_bounds():
    d, lo, hi = diff_confidence_interval([75.0], [72.0, 73.0])
    assert d == pytest.approx(2.5) and math.isnan(lo) and math.isnan(hi)
    assert interval_contains_zero(diff_confidence_interval([1.0], [2.0])) is None
    d, lo, hi = diff_confidence_interval([], [1.0, 2.0])
    assert math.isnan(d) and math.isnan(lo)


def test_zero_spread_and_containment():
    assert tuple(diff_confidence_interval([2, 2, 2], [1, 1])) == (1.0, 1.0, 1.0)
    assert interval_contains_zero(diff_confidence_interval([1, 2, 3], [2, 3, 4])) is True
    assert interval_contains_zero(diff_confidence_interval([10, 10.1, 10.2], [1, 1.1, 1.2])) is False
    with pytest.raises(ValueError, match="level"):
        diff_confidence_interval([1, 2], [1, 2], level=1.0)
