"""Confidence intervals for comparisons over repeats (pure functions, numpy + scipy only).

Every figure of an experiment is a mean over ``n`` repeats (seeds); a claim "A beats B" needs the
95 % confidence interval of ``A - B`` entirely below zero (lower error is better). Units are those of
the inputs (MPJPE in millimetres in this project) and are kept by every result.

Formulas (``x_1..x_n`` the values, ``t_{q,d}`` the ``q`` quantile of Student's t with ``d`` degrees
of freedom):

- mean: ``m = (1/n) sum x_i``; sample standard deviation ``s = sqrt(sum (x_i - m)^2 / (n - 1))``.
- :func:`mean_ci95`: ``m +- t_{0.975, n-1} * s / sqrt(n)``.
- :func:`paired_difference_ci95`: the arms were run with the same seeds (repeat ``k`` of ``a`` and
  repeat ``k`` of ``b`` share everything but the arm), so the per-repeat differences
  ``d_k = a_k - b_k`` are the sample and the interval is :func:`mean_ci95` of ``d``. Pairing removes
  the between-seed variance shared by both arms.
- :func:`welch_difference_ci95`: independent samples; ``m_a - m_b +- t_{0.975, nu} * se`` with
  ``se = sqrt(s_a^2/n_a + s_b^2/n_b)`` and the Welch-Satterthwaite degrees of freedom
  ``nu = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))``.

With a single value (``n == 1``; for Welch: either arm with one value) no spread can be estimated:
the mean is returned and ``lo``, ``hi`` and ``half_width`` are NaN, so :func:`beats` is False. With
zero spread (all values equal) the interval has zero width. Empty inputs and non-finite values raise
:class:`~posegen_ns.errors.PoseGenInputError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _sp_stats

from posegen_ns.errors import PoseGenInputError

__all__ = ["Interval", "mean_ci95", "paired_difference_ci95", "welch_difference_ci95", "beats", "CONFIDENCE"]

CONFIDENCE = 0.95
"""Two-sided confidence level of every interval in this module."""


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided 95 % confidence interval, in the units of the inputs.

    Attributes:
        mean: sample mean (for a difference: mean of ``a - b``).
        lo: lower bound ``mean - half_width`` (NaN when ``n == 1``).
        hi: upper bound ``mean + half_width`` (NaN when ``n == 1``).
        n: number of values (for a paired difference: pairs; for Welch: ``n_a + n_b``).
    """

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        """``(hi - lo) / 2`` (NaN when the interval is undefined)."""
        return (self.hi - self.lo) / 2.0

    def as_dict(self) -> dict:
        """``{"mean", "lo", "hi", "n", "half_width"}`` for JSON (NaN kept as float NaN)."""
        return asdict(self) | {"half_width": self.half_width}

    def __iter__(self):
        """Unpacks as ``(mean, lo, hi, half_width)``."""
        return iter((self.mean, self.lo, self.hi, self.half_width))


def _as_values(values: Iterable[float], what: str) -> np.ndarray:
    try:
        x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PoseGenInputError(f"{what}: values must be numbers ({exc}).") from None
    x = x.reshape(-1)
    if x.size == 0:
        raise PoseGenInputError(f"{what}: no values given; pass at least one repeat's value.")
    bad = ~np.isfinite(x)
    if bad.any():
        raise PoseGenInputError(
            f"{what}: {int(bad.sum())} of {x.size} values are NaN or infinite (positions "
            f"{np.flatnonzero(bad).tolist()}); drop or rerun the failed repeats first."
        )
    return x


def _t_quantile(dof: float) -> float:
    """``t_{0.975, dof}``: the two-sided 95 % critical value of Student's t."""
    return float(_sp_stats.t.ppf(0.5 + CONFIDENCE / 2.0, dof))


def _interval_from(x: np.ndarray) -> Interval:
    n = int(x.size)
    m = float(x.mean())
    if n < 2:
        return Interval(mean=m, lo=math.nan, hi=math.nan, n=n)
    half = _t_quantile(n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean=m, lo=m - half, hi=m + half, n=n)


def mean_ci95(values: Iterable[float]) -> Interval:
    """Mean and 95 % Student-t interval of ``values`` (one value per repeat).

    ``mean +- t_{0.975, n-1} * s / sqrt(n)``, ``s`` the sample standard deviation (``ddof=1``).

    Args:
        values: ``(n,)`` finite numbers, any unit (kept).

    Returns:
        :class:`Interval` (unpacks as ``mean, lo, hi, half_width``); for ``n == 1`` the bounds are NaN.

    Raises:
        PoseGenInputError: empty input, or a NaN / infinite value.
    """
    return _interval_from(_as_values(values, "mean_ci95"))


def paired_difference_ci95(a: Iterable[float], b: Iterable[float]) -> Interval:
    """95 % interval of the mean paired difference ``a - b`` (repeat ``k`` of both arms shares its seed).

    ``d_k = a_k - b_k``; result = :func:`mean_ci95` of ``d`` (``n`` = number of pairs).

    Args:
        a: ``(n,)`` values of arm A per repeat.
        b: ``(n,)`` values of arm B for the same repeats, in the same order.

    Raises:
        PoseGenInputError: empty or non-finite input, or ``a`` and ``b`` of different lengths.
    """
    xa = _as_values(a, "paired_difference_ci95 (a)")
    xb = _as_values(b, "paired_difference_ci95 (b)")
    if xa.size != xb.size:
        raise PoseGenInputError(
            f"paired_difference_ci95: a has {xa.size} values and b has {xb.size}; paired repeats need one "
            "value per repeat in both arms (use welch_difference_ci95 for unpaired samples)."
        )
    return _interval_from(xa - xb)


def welch_difference_ci95(a: Iterable[float], b: Iterable[float]) -> Interval:
    """95 % Welch interval of ``mean(a) - mean(b)`` for independent (unpaired) samples.

    ``(m_a - m_b) +- t_{0.975, nu} * sqrt(s_a^2/n_a + s_b^2/n_b)``, ``nu`` by Welch-Satterthwaite
    (module docstring). If both variances are zero the interval has zero width. ``n`` of the result is
    ``n_a + n_b``; bounds are NaN when either arm has a single value.

    Raises:
        PoseGenInputError: empty or non-finite input.
    """
    xa = _as_values(a, "welch_difference_ci95 (a)")
    xb = _as_values(b, "welch_difference_ci95 (b)")
    na, nb = int(xa.size), int(xb.size)
    m = float(xa.mean() - xb.mean())
    if na < 2 or nb < 2:
        return Interval(mean=m, lo=math.nan, hi=math.nan, n=na + nb)
    va, vb = float(xa.var(ddof=1)) / na, float(xb.var(ddof=1)) / nb
    se2 = va + vb
    if se2 == 0.0:
        return Interval(mean=m, lo=m, hi=m, n=na + nb)
    dof = se2**2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    half = _t_quantile(dof) * math.sqrt(se2)
    return Interval(mean=m, lo=m - half, hi=m + half, n=na + nb)


def beats(result: Interval) -> bool:
    """Whether a difference ``A - B`` (of an error, lower is better) shows A beats B: ``hi < 0``.

    False when the interval is undefined (NaN bounds, e.g. a single repeat).
    """
    return bool(math.isfinite(result.hi) and result.hi < 0.0)
