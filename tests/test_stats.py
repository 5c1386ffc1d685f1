"""Confidence intervals over repeats against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from posegen_ns.errors import PoseGenInputError
from posegen_ns.stats import Interval, beats, mean_ci95, paired_difference_ci95, welch_difference_ci95

T975_4 = 2.776445  # Student's t, 0.975 quantile, 4 degrees of freedom (tables)
T975_3 = 3.182446  # ... 3 degrees of freedom


def test_mean_ci95_hand_case():
    r = mean_ci95([1, 2, 3, 4, 5])
    half = T975_4 * math.sqrt(2.5) / math.sqrt(5)  # sd = sqrt(2.5)
    assert r.n == 5 and r.mean == pytest.approx(3.0)
    assert r.half_width == pytest.approx(half, abs=1e-5)
    assert (r.lo, r.hi) == (pytest.approx(3 - half, abs=1e-5), pytest.approx(3 + half, abs=1e-5))
    mean, lo, hi, hw = r  # unpacks as (mean, lo, hi, half_width)
    assert (mean, lo, hi, hw) == (r.mean, r.lo, r.hi, r.half_width)
    assert isinstance(r, Interval)
    assert r.as_dict()["half_width"] == pytest.approx(half, abs=1e-5)


def test_single_value_has_undefined_interval_and_constant_has_zero_width():
    r = mean_ci95([7.5])
    assert r.mean == 7.5 and r.n == 1 and math.isnan(r.lo) and math.isnan(r.hi) and math.isnan(r.half_width)
    assert not beats(r)
    c = mean_ci95(np.full(4, -2.0))
    assert (c.lo, c.hi) == (-2.0, -2.0)


def test_paired_difference_hand_case_and_beats():
    a, b = [10, 12, 11, 13], [11, 14, 12, 15]  # differences -1, -2, -1, -2
    r = paired_difference_ci95(a, b)
    half = T975_3 * math.sqrt(1 / 3) / 2  # sd of d = sqrt(1/3), n = 4
    assert r.n == 4 and r.mean == pytest.approx(-1.5)
    assert r.half_width == pytest.approx(half, abs=1e-5)
    assert r.hi < 0 and beats(r)
    assert not beats(paired_difference_ci95(b, a))
    # an interval that straddles zero is no win
    assert not beats(paired_difference_ci95([1, -1, 2, -2], [0, 0, 0, 0]))


def test_welch_difference_hand_case():
    # a: mean 2, var 1; b: mean 4, var 4; se^2 = 1/3 + 4/3; nu = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17
    r = welch_difference_ci95([1, 2, 3], [2, 4, 6])
    from scipy.stats import t

    half = t.ppf(0.975, 50 / 17) * math.sqrt(5 / 3)
    assert r.mean == pytest.approx(-2.0) and r.n == 6
    assert r.half_width == pytest.approx(half, rel=1e-9)
    assert not beats(r)  # wide interval straddles 0
    assert math.isnan(welch_difference_ci95([1.0], [2.0, 3.0]).hi)
    z = welch_difference_ci95([1, 1, 1], [3, 3])
    assert (z.mean, z.lo, z.hi) == (-2.0, -2.0, -2.0) and beats(z)


@pytest.mark.parametrize("fn", [mean_ci95])
@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, float("inf")]])
def test_bad_single_inputs_raise(fn, bad):
    with pytest.raises(PoseGenInputError):
        fn(bad)


def test_bad_pair_inputs_raise():
    with pytest.raises(PoseGenInputError, match="NaN"):
        paired_difference_ci95([1, 2], [1, float("nan")])
    with pytest.raises(PoseGenInputError, match="paired"):
        paired_difference_ci95([1, 2, 3], [1, 2])
    with pytest.raises(PoseGenInputError, match="no values"):
        welch_difference_ci95([], [1, 2])
    with pytest.raises(PoseGenInputError):
        mean_ci95(["a", "b"])
