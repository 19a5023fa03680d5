"""Distances between two binned distributions of the same variable.

Both arguments are counts over the same bins (see ``edgeops_protocol.histogram``).
Pure numpy; checked in the tests against direct computations and scipy.

>>> round(psi([50, 50], [50, 50]), 6)
0.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["js_distance", "ks_binned", "psi"]

_EPS = 1e-4  # floor on a bin's share, so empty bins do not make PSI infinite


def _shares(counts: Sequence[float]) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or np.any(c < 0):
        raise ValueError("counts must be a non-empty list of non-negative numbers")
    total = c.sum()
    if total <= 0:
        raise ValueError("counts must not all be zero")
    return c / total


def _pair(expected: Sequence[float], actual: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    e, a = _shares(expected), _shares(actual)
    if e.size != a.size:
        raise ValueError(f"bin counts differ: {e.size} vs {a.size}")
    return e, a


def psi(expected: Sequence[float], actual: Sequence[float], eps: float = _EPS) -> float:
    """Population stability index: sum over bins of (a - e) * ln(a / e), shares floored at eps."""
    e, a = _pair(expected, actual)
    e, a = np.maximum(e, eps), np.maximum(a, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Jensen-Shannon distance (base 2, so between 0 and 1)."""
    e, a = _pair(expected, actual)
    m = 0.5 * (e + a)

    def kl(p: np.ndarray, q: np.ndarray) -> float:
        mask = p > 0
        return float(np.sum(p[mask] * np.log2(p[mask] / q[mask])))

    return float(np.sqrt(max(0.0, 0.5 * kl(e, m) + 0.5 * kl(a, m))))


def ks_binned(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Kolmogorov-Smirnov statistic on the binned CDFs: the largest gap between them."""
    e, a = _pair(expected, actual)
    return float(np.max(np.abs(np.cumsum(e) - np.cumsum(a))))
