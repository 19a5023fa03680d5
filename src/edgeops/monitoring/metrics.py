"""Distances and tests between two binned distributions of the same variable.

Both arguments are counts over the same bins (see ``edgeops_protocol.histogram``).
Distances (:func:`psi`, :func:`js_distance`, :func:`ks_binned`) are pure numpy;
the chi-square tests take their p-values from scipy's chi-square distribution
(``scipy.special.chdtrc``, what ``scipy.stats.chi2.sf`` computes; imported when
called). All are checked in the tests against direct computations and scipy.

Effect sizes and significance answer different questions. PSI, JS and KS say
how far apart two histograms are, whatever their sizes; the chi-square tests say
whether the gap is larger than sampling noise at these sample counts. For PSI
the two meet in :func:`psi_threshold`: to second order PSI equals Pearson's
chi-square divergence ``sum (a - e)**2 / e``, so with no drift
``PSI / (1/n + 1/m)`` is approximately chi-square with ``bins - 1`` degrees of
freedom (``n`` and ``m`` the two sample counts).

>>> round(psi([50, 50], [50, 50]), 6)
0.0
>>> t = chi_square_2sample([30, 50, 20], [10, 30, 60])
>>> round(t.statistic, 2), t.dof, t.p_value < 1e-6
(35.0, 2, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ChiSquare",
    "Counts",
    "chi_square",
    "chi_square_2sample",
    "coarsen_bins",
    "js_distance",
    "ks_binned",
    "psi",
    "psi_threshold",
    "regroup",
]

Counts = Sequence[float] | np.ndarray  # counts over bins, as a list or an array

_EPS = 1e-4  # floor on a bin's share, so empty bins do not make PSI infinite


def _shares(counts: Counts) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or np.any(c < 0):
        raise ValueError("counts must be a non-empty list of non-negative numbers")
    total = c.sum()
    if total <= 0:
        raise ValueError("counts must not all be zero")
    return c / total


def _pair(expected: Counts, actual: Counts) -> tuple[np.ndarray, np.ndarray]:
    e, a = _shares(expected), _shares(actual)
    if e.size != a.size:
        raise ValueError(f"bin counts differ: {e.size} vs {a.size}")
    return e, a


def psi(expected: Counts, actual: Counts, eps: float = _EPS) -> float:
    """Population stability index: sum over bins of (a - e) * ln(a / e), shares floored at eps."""
    e, a = _pair(expected, actual)
    e, a = np.maximum(e, eps), np.maximum(a, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(expected: Counts, actual: Counts) -> float:
    """Jensen-Shannon distance (base 2, so between 0 and 1)."""
    e, a = _pair(expected, actual)
    m = 0.5 * (e + a)

    def kl(p: np.ndarray, q: np.ndarray) -> float:
        mask = p > 0
        return float(np.sum(p[mask] * np.log2(p[mask] / q[mask])))

    return float(np.sqrt(max(0.0, 0.5 * kl(e, m) + 0.5 * kl(a, m))))


def ks_binned(expected: Counts, actual: Counts) -> float:
    """Kolmogorov-Smirnov statistic on the binned CDFs: the largest gap between them."""
    e, a = _pair(expected, actual)
    return float(np.max(np.abs(np.cumsum(e) - np.cumsum(a))))


@dataclass(frozen=True)
class ChiSquare:
    """A chi-square test result: Pearson's statistic, degrees of freedom, upper-tail p-value."""

    statistic: float
    dof: int
    p_value: float

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain JSON values (an infinite statistic becomes ``None``)."""
        stat = self.statistic if math.isfinite(self.statistic) else None
        return {"statistic": stat, "dof": self.dof, "p_value": self.p_value}


def _counts(counts: Counts, what: str) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or np.any(c < 0) or not np.all(np.isfinite(c)):
        raise ValueError(f"{what} must be a non-empty list of non-negative numbers")
    return c


def _chi2_sf(statistic: float, dof: int) -> float:
    # scipy.special's ufunc is what scipy.stats.chi2.sf evaluates, without its overhead
    from scipy.special import chdtrc

    if dof < 1:
        return 1.0
    if not math.isfinite(statistic):
        return 0.0
    return float(chdtrc(dof, statistic))


def chi_square(expected: Counts, actual: Counts) -> ChiSquare:
    """Goodness of fit of ``actual`` counts to the shares of ``expected`` (a known distribution).

    ``expected`` is rescaled to the total of ``actual``; this is
    ``scipy.stats.chisquare(actual, f_exp)`` with ``dof = bins - 1``. Zero-expected
    bins: where ``actual`` is zero too they are dropped (and take no degree of
    freedom); where ``actual`` is not, the fit is impossible and the statistic is
    infinite with p-value 0. When the reference is itself a sample, use
    :func:`chi_square_2sample`, which accounts for its noise.

    >>> r = chi_square([1, 1, 0], [10, 30, 0])
    >>> r.statistic, r.dof, round(r.p_value, 4)
    (10.0, 1, 0.0016)
    """
    e, a = _counts(expected, "expected"), _counts(actual, "actual")
    if e.size != a.size:
        raise ValueError(f"bin counts differ: {e.size} vs {a.size}")
    if e.sum() <= 0:
        raise ValueError("expected counts must not all be zero")
    keep = (e > 0) | (a > 0)
    e, a = e[keep], a[keep]
    dof = int(e.size) - 1
    if np.any((e == 0) & (a > 0)):
        return ChiSquare(math.inf, dof, 0.0)
    n = a.sum()
    if n == 0:
        return ChiSquare(0.0, dof, 1.0)
    f_exp = e / e.sum() * n
    stat = float(np.sum((a - f_exp) ** 2 / f_exp))
    return ChiSquare(stat, dof, _chi2_sf(stat, dof))


def chi_square_2sample(reference: Counts, actual: Counts) -> ChiSquare:
    """Pearson's chi-square test that two samples of counts come from one distribution.

    The test of homogeneity on the 2 x bins table (``scipy.stats.chi2_contingency``
    without continuity correction). Bins empty in both samples are dropped; with
    fewer than two bins left, or an empty sample, there is nothing to test
    (statistic 0, ``dof`` 0, p-value 1). The chi-square approximation wants an
    expected count of about 5 or more in every cell: merge sparse bins first
    (:func:`coarsen_bins`).

    >>> chi_square_2sample([10, 10], [10, 10])
    ChiSquare(statistic=0.0, dof=1, p_value=1.0)
    """
    r, a = _counts(reference, "reference"), _counts(actual, "actual")
    if r.size != a.size:
        raise ValueError(f"bin counts differ: {r.size} vs {a.size}")
    keep = (r + a) > 0
    r, a = r[keep], a[keep]
    n_r, n_a = r.sum(), a.sum()
    if r.size < 2 or n_r == 0 or n_a == 0:
        return ChiSquare(0.0, 0, 1.0)
    pooled = (r + a) / (n_r + n_a)
    e_r, e_a = pooled * n_r, pooled * n_a
    stat = float(np.sum((r - e_r) ** 2 / e_r) + np.sum((a - e_a) ** 2 / e_a))
    dof = int(r.size) - 1
    return ChiSquare(stat, dof, _chi2_sf(stat, dof))


def coarsen_bins(reference: Counts, min_share: float) -> list[tuple[int, int]]:
    """Group adjacent bins so that each group holds at least ``min_share`` of ``reference``.

    Returns ``(start, stop)`` index ranges covering every bin in order. Groups
    are closed left to right as soon as they reach ``min_share``; a short last
    group joins the one before. The grouping depends on the reference only, so
    every window is tested on the same groups. With baseline quantile edges the
    underflow and overflow bins (empty in the baseline) join their neighbours.

    >>> coarsen_bins([0, 10, 10, 1, 0], 0.2)
    [(0, 2), (2, 5)]
    """
    r = _counts(reference, "reference")
    total = r.sum()
    if total <= 0:
        return [(0, int(r.size))]
    groups: list[tuple[int, int]] = []
    start, acc = 0, 0.0
    for i, c in enumerate(r / total):
        acc += c
        if acc >= min_share:
            groups.append((start, i + 1))
            start, acc = i + 1, 0.0
    if start < r.size:
        if groups:
            groups[-1] = (groups[-1][0], int(r.size))
        else:
            groups.append((start, int(r.size)))
    return groups


def regroup(counts: Counts, groups: Sequence[tuple[int, int]]) -> list[float]:
    """Sum ``counts`` over the ``(start, stop)`` groups of :func:`coarsen_bins`.

    >>> regroup([1, 2, 3, 4], [(0, 1), (1, 4)])
    [1.0, 9.0]
    """
    c = np.asarray(counts, dtype=np.float64)
    return [float(c[a:b].sum()) for a, b in groups]


def psi_threshold(n: float, n_ref: float | None, bins: int, alpha: float) -> float:
    """The PSI that a window of ``n`` values exceeds with probability ``alpha`` under no drift.

    ``chi2.isf(alpha, bins - 1) * (1/n + 1/n_ref)``: second-order expansion
    of ``(a - e) * ln(a / e)`` gives Pearson's divergence, whose scaled sample
    value is chi-square (module docstring). ``n_ref=None`` treats the reference
    as exact. The approximation needs every bin to hold a few values; on sparse
    bins PSI's tail is heavier (coarsen the bins first).

    >>> round(psi_threshold(500, 2000, 10, 0.01), 4)
    0.0542
    """
    if n <= 0 or (n_ref is not None and n_ref <= 0):
        raise ValueError("sample counts must be positive")
    if bins < 2:
        raise ValueError("PSI needs at least two bins")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")
    from scipy.special import chdtri  # the inverse of chdtrc: scipy.stats.chi2.isf

    scale = 1.0 / n + (1.0 / n_ref if n_ref is not None else 0.0)
    return float(chdtri(bins - 1, alpha)) * scale
