"""Small data sets for examples and tests: seeded sensor windows and the digits.

:func:`sensor_windows` makes 3-axis accelerometer windows of four activities
(``idle``, ``walk``, ``run``, ``shake``). Everything is drawn from
``numpy.random.default_rng(seed)``, so a seed names one exact table. Each
window of ``length`` samples at :data:`SAMPLE_RATE_HZ` is, per axis ``c``::

    x_c[i] = gravity_c + a * A_c * sin(2*pi*f*t[i] + phi_c)
                       + a * A_c * h * sin(4*pi*f*t[i] + psi_c) + sigma * e_c[i]

with ``t[i] = i / SAMPLE_RATE_HZ``; class base frequency ``f0``, per-axis
amplitudes ``A_c`` and noise ``sigma`` from :data:`PROFILES`; per window a
frequency ``f = f0 * exp(0.2 * N(0,1))``, an amplitude factor
``a = exp(0.35 * N(0,1))``, a harmonic share ``h ~ U(0, 0.4)``, phases
``phi_c, psi_c ~ U(0, 2*pi)``; per sample ``e_c[i] ~ N(0, 1)``. Gravity (1 g)
points along ``az``, tilted by ``theta ~ N(0, 0.2)`` rad towards ``ax``
(``gravity_ax = sin(theta)``, ``gravity_az = cos(theta)``, ``gravity_ay = 0``).
Walk and run overlap in frequency and amplitude, so the classes are learnable
but not perfectly separable.

``drift`` injects changes for monitoring tests; all keys are optional:

* ``{"noise_scale": s}`` multiplies ``sigma`` by ``s`` on every axis, or
  ``{"noise_scale": {"ay": s}}`` on the named axes only;
* ``{"gain": {"ax": g}}`` multiplies the named axes by ``g`` (a sensor gain error);
* ``{"mean_shift": {"ax": k}}`` adds ``k`` times the standard deviation of that
  axis (over all its values in the same table without drift) to the named axes.

They apply in that order, and drift draws no random numbers: with the same
seed, a drifted table has the same rows, labels and draws as the plain one.

>>> df = sensor_windows(n_per_class=2, length=8, seed=1)
>>> df.shape, sorted(df["label"].unique())
((8, 25), ['idle', 'run', 'shake', 'walk'])
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgeops.errors import InvalidInput, MissingExtra
from edgeops.fsutil import atomic_write
from edgeops_protocol.feature_spec import MAX_WINDOW_LENGTH, window_columns

__all__ = [
    "CHANNELS",
    "CLASSES",
    "PROFILES",
    "SAMPLE_RATE_HZ",
    "digits_frame",
    "sensor_windows",
    "write_table",
]

SAMPLE_RATE_HZ = 50.0
CHANNELS = ("ax", "ay", "az")
CLASSES = ("idle", "walk", "run", "shake")
# class -> (base frequency in Hz, amplitude per axis ax/ay/az in g, noise sigma in g)
PROFILES: dict[str, tuple[float, tuple[float, float, float], float]] = {
    "idle": (0.8, (0.03, 0.03, 0.03), 0.05),
    "walk": (1.8, (0.35, 0.15, 0.30), 0.12),
    "run": (2.6, (0.60, 0.25, 0.50), 0.15),
    "shake": (5.5, (0.25, 0.55, 0.20), 0.12),
}
_DRIFT_KEYS = ("noise_scale", "gain", "mean_shift")


def _per_channel(value: Any, key: str, *, allow_scalar: bool) -> dict[str, float]:
    if allow_scalar and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = dict.fromkeys(CHANNELS, value)
    if not isinstance(value, Mapping):
        raise InvalidInput(
            f"drift {key!r} must map channel names ({', '.join(CHANNELS)}) to numbers"
        )
    out: dict[str, float] = {}
    for channel, v in value.items():
        if channel not in CHANNELS:
            raise InvalidInput(
                f"drift {key!r}: unknown channel {channel!r}; use {', '.join(CHANNELS)}"
            )
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InvalidInput(f"drift {key!r}: {channel} must be a finite number, got {v!r}")
        out[channel] = float(v)
    return out


def _check_drift(drift: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    if drift is None:
        return {}
    if not isinstance(drift, Mapping):
        raise InvalidInput(f"drift must be a mapping with keys {', '.join(_DRIFT_KEYS)}")
    unknown = [k for k in drift if k not in _DRIFT_KEYS]
    if unknown:
        raise InvalidInput(f"drift: unknown key {unknown[0]!r}; use {', '.join(_DRIFT_KEYS)}")
    out = {k: _per_channel(v, k, allow_scalar=k == "noise_scale") for k, v in drift.items()}
    if any(s < 0 for s in out.get("noise_scale", {}).values()):
        raise InvalidInput("drift 'noise_scale' must not be negative")
    return out


def sensor_windows(
    n_per_class: int = 200,
    length: int = 64,
    seed: int = 0,
    drift: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Seeded accelerometer windows: ``ax_000..``, ``ay_..``, ``az_..`` and ``label``.

    Rows are shuffled; the index is ``0..n-1``. See the module docstring for the
    signal model and for ``drift``.
    """
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise InvalidInput(f"n_per_class must be a positive integer, got {n_per_class!r}")
    if not 2 <= length <= MAX_WINDOW_LENGTH:
        raise InvalidInput(f"length must be in 2..{MAX_WINDOW_LENGTH}, got {length!r}")
    changes = _check_drift(drift)
    rng = np.random.default_rng(seed)
    n = n_per_class * len(CLASSES)
    t = np.arange(length) / SAMPLE_RATE_HZ
    labels = np.repeat(np.array(CLASSES, dtype=object), n_per_class)
    f0 = np.repeat([PROFILES[c][0] for c in CLASSES], n_per_class)
    amp = np.repeat([PROFILES[c][1] for c in CLASSES], n_per_class, axis=0)  # (n, 3)
    sigma = np.repeat([PROFILES[c][2] for c in CLASSES], n_per_class)

    freq = f0 * np.exp(0.2 * rng.standard_normal(n))
    scale = np.exp(0.35 * rng.standard_normal(n))
    harmonic = rng.uniform(0.0, 0.4, n)
    tilt = 0.2 * rng.standard_normal(n)
    gravity = np.stack([np.sin(tilt), np.zeros(n), np.cos(tilt)], axis=1)
    signal, noise = {}, {}
    for j, channel in enumerate(CHANNELS):
        phi, psi = rng.uniform(0.0, 2 * np.pi, (2, n, 1))
        wt = 2 * np.pi * freq[:, None] * t[None, :]
        a = (scale * amp[:, j])[:, None]
        harmonics = a * harmonic[:, None] * np.sin(2 * wt + psi)
        signal[channel] = gravity[:, j : j + 1] + a * np.sin(wt + phi) + harmonics
        noise[channel] = sigma[:, None] * rng.standard_normal((n, length))
    order = rng.permutation(n)

    data: dict[str, np.ndarray] = {}
    for channel in CHANNELS:
        clean = signal[channel] + noise[channel]
        values = signal[channel] + noise[channel] * changes.get("noise_scale", {}).get(channel, 1.0)
        values = values * changes.get("gain", {}).get(channel, 1.0)
        values = values + changes.get("mean_shift", {}).get(channel, 0.0) * float(clean.std())
        for i, name in enumerate(window_columns(channel, length)):
            data[name] = values[order, i]
    data["label"] = labels[order]
    return pd.DataFrame(data)


def digits_frame() -> pd.DataFrame:
    """scikit-learn's bundled 8x8 digits (1797 rows): ``px_00..px_63`` (0..16) and ``label``.

    >>> digits_frame().shape
    (1797, 65)
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"px_{i:02d}" for i in range(64)])
    frame["label"] = digits.target.astype(np.int64)
    return frame


def write_table(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``df`` to ``path`` atomically: CSV for ``.csv``, Parquet for ``.parquet``.

    The table goes to a temporary file in the same directory, is flushed to
    disk, then renamed over ``path``, so readers see the old file or the whole
    new one. CSV has no index column and floats in shortest round-trip form;
    pandas 3 reads them back exactly (pandas 2 needs
    ``float_precision="round_trip"``). Parquet needs pyarrow
    (``pip install 'edgeops[parquet]'``).
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise InvalidInput(f"cannot write {target.name}: use a .csv or .parquet file name")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise MissingExtra("pyarrow", "parquet") from exc
    with atomic_write(target) as fh:
        if suffix == ".csv":
            df.to_csv(fh, index=False, lineterminator="\n", encoding="utf-8")
        else:
            df.to_parquet(fh, index=False)
    return target
