"""Fixed-edge histograms with underflow and overflow bins.

The bin rule is part of the protocol (docs/protocol.md) and the C firmware
implements the same one. For edges ``e[0] < e[1] < ... < e[k]`` there are
``k + 2`` counts:

* ``counts[0]``      values ``x < e[0]``               (underflow)
* ``counts[j]``      values ``e[j-1] <= x < e[j]``     for ``j = 1 .. k-1``
* ``counts[k]``      values ``e[k-1] <= x <= e[k]``    (the last interior bin is closed)
* ``counts[k+1]``    values ``x > e[k]``               (overflow)

Non-finite values (NaN, +-inf) are not binned; callers count them apart.

>>> histogram([0.0, 0.5, 1.0, 2.0, -1.0], [0.0, 1.0])
[1, 3, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["bin_index", "histogram", "quantile_edges", "validate_edges"]


def validate_edges(edges: Sequence[float]) -> np.ndarray:
    """Return ``edges`` as a float64 array, or raise ``ValueError`` if they are unusable."""
    arr = np.asarray(edges, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError("bin edges need at least two values")
    if not np.all(np.isfinite(arr)):
        raise ValueError("bin edges must be finite")
    if not np.all(np.diff(arr) > 0):
        raise ValueError("bin edges must be strictly increasing")
    return arr


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Index into the ``len(edges) + 1`` histogram counts for each finite value."""
    idx = np.searchsorted(edges, values, side="right")
    idx[values == edges[-1]] = edges.size - 1
    return idx


def histogram(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> list[int]:
    """Counts of finite ``values`` in the bins of ``edges`` (see the module docstring)."""
    e = validate_edges(edges)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    counts = np.bincount(bin_index(v, e), minlength=e.size + 1)
    return [int(c) for c in counts]


def quantile_edges(values: Sequence[float] | np.ndarray, bins: int = 10) -> list[float]:
    """Edges at the quantiles of ``values``: about equal mass per bin on the baseline.

    Repeated quantiles (discrete data) are merged, so fewer bins may come back. A
    constant column gets one bin of width 1 centred on its value.

    >>> quantile_edges([1, 2, 3, 4, 5], bins=4)
    [1.0, 2.0, 3.0, 4.0, 5.0]
    >>> quantile_edges([7, 7, 7])
    [6.5, 7.5]
    """
    if bins < 1:
        raise ValueError("bins must be at least 1")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no finite values to take edges from")
    edges = np.unique(np.quantile(v, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size < 2:
        c = float(edges[0])
        return [c - 0.5, c + 0.5]
    return [float(x) for x in edges]
