"""The numeric kernels of the feature transforms, with their exact formulas.

These formulas are the contract a C port implements. Arithmetic is float64;
:mod:`edgeops_protocol.features` casts the finished feature matrix to float32.
Window kernels take a ``(n, L)`` array, one window ``x[0] .. x[L-1]`` per row,
and return one value (or one row of values) per window. With
``mean = (1/L) * sum_i x[i]`` and ``y[i] = x[i] - mean``:

=========  =================================================================
stat       value
=========  =================================================================
``mean``   ``(1/L) * sum_i x[i]``
``std``    ``sqrt((1/L) * sum_i y[i]**2)``  (population, ddof = 0)
``min``    ``min_i x[i]``
``max``    ``max_i x[i]``
``rms``    ``sqrt((1/L) * sum_i x[i]**2)``  (of the raw window, mean kept)
``ptp``    ``max - min``
``zcr``    ``(1/(L-1)) * #{i in 0..L-2 : y[i] < 0 < y[i+1] or y[i+1] < 0 < y[i]}``
=========  =================================================================

A sample exactly at the mean (``y == 0``) never makes a crossing.

``fft_bands`` with ``B`` bands: ``P[k] = |Y[k]|**2 / L`` for the DFT
``Y[k] = sum_i y[i] * exp(-2j*pi*k*i/L)`` of the mean-removed window, for the
non-DC bins ``k = 1 .. M`` where ``M = L // 2`` (the Nyquist bin is included
when ``L`` is even). Band ``b`` (``0 <= b < B <= M``) is the sum of ``P[k]``
over ``1 + (b*M)//B <= k <= ((b+1)*M)//B``: contiguous bands, equal in width
when ``B`` divides ``M`` and otherwise differing by at most one bin. Bins are
not doubled (this is not a one-sided PSD): a pure tone below the Nyquist
frequency puts half of ``sum_i y[i]**2`` in its band.

Fitted transforms apply a per-feature formula: ``clip`` is
``min(max(v, lower), upper)`` (a missing bound is skipped) and ``scale`` is
``(v - center) / scale``. Quantile bounds are ``numpy.quantile`` with its
default linear interpolation. ``standard`` scaling fits ``center = mean`` and
``scale = std`` (ddof = 0); ``minmax`` fits ``center = min`` and
``scale = max - min``; a ``scale`` below ``MIN_SCALE`` becomes 1.0, so a
constant feature is only centred. Non-finite inputs are not repaired: NaN
propagates through every formula (except ``zcr``, which does not count it).

>>> x = np.array([[1.0, -1.0, 1.0, -1.0]])
>>> float(window_stat(x, "zcr")[0]), float(window_stat(x, "rms")[0])
(1.0, 1.0)
>>> band_bins(64, 4)
[(1, 9), (9, 17), (17, 25), (25, 33)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "MIN_SCALE",
    "apply_clip",
    "apply_scale",
    "band_bins",
    "category_key",
    "fft_band_energies",
    "fit_clip_quantiles",
    "fit_one_hot",
    "fit_scale",
    "one_hot",
    "window_stat",
]

MIN_SCALE = 1e-12


def window_stat(windows: np.ndarray, stat: str) -> np.ndarray:
    """One statistic (see the module docstring) of each row of ``windows``."""
    x = np.asarray(windows, dtype=np.float64)
    if stat == "mean":
        return x.mean(axis=1)
    if stat == "std":
        return x.std(axis=1)
    if stat == "min":
        return x.min(axis=1)
    if stat == "max":
        return x.max(axis=1)
    if stat == "rms":
        return np.sqrt((x * x).mean(axis=1))
    if stat == "ptp":
        return x.max(axis=1) - x.min(axis=1)
    if stat == "zcr":
        s = np.sign(x - x.mean(axis=1, keepdims=True))
        crossings = np.count_nonzero(s[:, :-1] * s[:, 1:] < 0, axis=1)
        return crossings / (x.shape[1] - 1)
    raise ValueError(f"unknown window statistic {stat!r}")


def band_bins(length: int, bands: int) -> list[tuple[int, int]]:
    """``(first, stop)`` rFFT bin range of each band (``stop`` excluded)."""
    m = length // 2
    if not 1 <= bands <= m:
        raise ValueError(f"bands must be in 1..{m} for windows of length {length}")
    return [(1 + b * m // bands, 1 + (b + 1) * m // bands) for b in range(bands)]


def fft_band_energies(windows: np.ndarray, bands: int) -> np.ndarray:
    """``(n, bands)`` band energies of each row of ``windows`` (module docstring).

    >>> e = fft_band_energies(np.array([[0.0, 1.0, 0.0, -1.0]]), 2)
    >>> e.tolist()
    [[1.0, 0.0]]
    """
    x = np.asarray(windows, dtype=np.float64)
    length = x.shape[1]
    spectrum = np.fft.rfft(x - x.mean(axis=1, keepdims=True), axis=1)
    power = (spectrum.real**2 + spectrum.imag**2) / length
    out = np.empty((x.shape[0], bands), dtype=np.float64)
    for b, (first, stop) in enumerate(band_bins(length, bands)):
        out[:, b] = power[:, first:stop].sum(axis=1)
    return out


def fit_clip_quantiles(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """Lower and upper clip bounds at quantiles ``low`` and ``high`` of ``values``."""
    lo, hi = np.quantile(np.asarray(values, dtype=np.float64), [low, high])
    return float(lo), float(hi)


def apply_clip(values: np.ndarray, lower: float | None, upper: float | None) -> np.ndarray:
    """``min(max(values, lower), upper)``; a bound of ``None`` is not applied."""
    out = np.asarray(values, dtype=np.float64)
    if lower is not None:
        out = np.maximum(out, lower)
    if upper is not None:
        out = np.minimum(out, upper)
    return out


def fit_scale(values: np.ndarray, method: str) -> tuple[float, float]:
    """``(center, scale)`` of ``values`` for ``method`` ``standard`` or ``minmax``."""
    v = np.asarray(values, dtype=np.float64)
    if method == "standard":
        center, scale = float(v.mean()), float(v.std())
    elif method == "minmax":
        center, scale = float(v.min()), float(v.max() - v.min())
    else:
        raise ValueError(f"unknown scale method {method!r}")
    return center, (scale if scale >= MIN_SCALE else 1.0)


def apply_scale(values: np.ndarray, center: float, scale: float) -> np.ndarray:
    """``(values - center) / scale``."""
    return (np.asarray(values, dtype=np.float64) - center) / scale


def category_key(value: object) -> str | None:
    """The category a raw value stands for: ``str(value)``, or None when missing.

    None, NaN and pandas' NA are missing.

    >>> category_key("lab"), category_key(3), category_key(float("nan"))
    ('lab', '3', None)
    """
    if value is None:
        return None
    try:
        if value != value:  # NaN
            return None
    except TypeError:  # pandas.NA refuses to be a bool
        return None
    return str(value)


def fit_one_hot(values: Sequence[object] | np.ndarray) -> list[str]:
    """Sorted distinct categories (by code point) of the non-missing ``values``."""
    return sorted({k for k in (category_key(v) for v in values) if k is not None})


def one_hot(
    values: Sequence[object] | np.ndarray, categories: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, len(categories))`` 0/1 indicators and a mask of rows in no category.

    >>> m, unknown = one_hot(["b", "x", None], ["a", "b"])
    >>> m.tolist(), unknown.tolist()
    ([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]], [False, True, True])
    """
    index = {c: j for j, c in enumerate(categories)}
    out = np.zeros((len(values), len(categories)), dtype=np.float64)
    unknown = np.zeros(len(values), dtype=bool)
    for r, value in enumerate(values):
        key = category_key(value)
        j = None if key is None else index.get(key)
        if j is None:
            unknown[r] = True
        else:
            out[r, j] = 1.0
    return out, unknown
