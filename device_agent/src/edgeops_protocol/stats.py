"""On-device statistics windows: mergeable histograms over the baseline's bins.

A :class:`WindowStats` is built from a variant's baseline profile (shipped in
the manifest's ``serving.baseline``) and counts, per prediction, what the model
saw and said: a histogram per input feature (the baseline's edges, with under-
and overflow; non-finite values counted apart), the predicted class counts, a
confidence histogram, a latency histogram, errors and non-finite outputs. All of
it is sums of counts, so windows merge across time and devices by adding
(:func:`merge_windows`) and drift can be computed at any level without raw data
leaving the device.

Updates are cheap: rows go into a small buffer and are binned a block at a time
(one vectorized call per feature per block), so a prediction costs a buffer
write. :meth:`WindowStats.window` flushes and returns the window dict (the
``stats`` part of a telemetry message, docs/protocol.md).

>>> import numpy as np
>>> base = {"features": [{"name": "x", "edges": [0.0, 1.0, 2.0]}],
...         "outputs": {"labels": ["a", "b"], "confidence_edges": [0.0, 0.5, 1.0]}}
>>> w = WindowStats(base)
>>> w.update(np.array([0.5]), np.array([0.2, 0.8]), latency_ms=1.5)
>>> w.update(np.array([9.0]), np.array([0.9, 0.1]), latency_ms=0.3)
>>> d = w.window()
>>> d["count"], d["features"][0], d["class_counts"], d["confidence_counts"]
(2, [0, 1, 0, 1], [1, 1], [0, 0, 2, 0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .baseline import CONFIDENCE_EDGES
from .histogram import bin_index

__all__ = ["LATENCY_EDGES_MS", "STATS_FORMAT", "WindowStats", "empty_window", "merge_windows"]

STATS_FORMAT = 1
LATENCY_EDGES_MS = [
    0.0,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1000.0,
]
_BLOCK = 64


def _counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    return np.bincount(bin_index(finite, edges), minlength=edges.size + 1)


class WindowStats:
    """Counts for one window of predictions of one model variant."""

    def __init__(self, baseline: Mapping[str, Any]) -> None:
        feats = baseline.get("features", [])
        self.names = [str(f["name"]) for f in feats]
        self.edges = [np.asarray(f["edges"], dtype=np.float64) for f in feats]
        outputs = baseline.get("outputs", {})
        self.labels = [str(x) for x in outputs.get("labels", [])]
        self.conf_edges = np.asarray(outputs.get("confidence_edges", CONFIDENCE_EDGES))
        self.lat_edges = np.asarray(LATENCY_EDGES_MS)
        self._x = np.empty((_BLOCK, len(self.edges)), dtype=np.float64)
        self._lat = np.empty(_BLOCK, dtype=np.float64)
        self._cls = np.empty(_BLOCK, dtype=np.int64)
        self._conf = np.empty(_BLOCK, dtype=np.float64)
        self._n = 0
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.errors = 0
        self.non_finite_outputs = 0
        self.feature_counts = [np.zeros(e.size + 1, dtype=np.int64) for e in self.edges]
        self.feature_non_finite = np.zeros(len(self.edges), dtype=np.int64)
        self.class_counts = np.zeros(max(1, len(self.labels)), dtype=np.int64)
        self.conf_counts = np.zeros(self.conf_edges.size + 1, dtype=np.int64)
        self.lat_counts = np.zeros(self.lat_edges.size + 1, dtype=np.int64)
        self.lat_sum = 0.0
        self.lat_max = 0.0
        self._n = 0

    def update(
        self,
        features: np.ndarray,
        outputs: np.ndarray | None,
        latency_ms: float,
        error: bool = False,
    ) -> None:
        """Count one prediction (``outputs`` is None when the model raised)."""
        self.count += 1
        if error or outputs is None:
            self.errors += 1
        i = self._n
        if self._x.shape[1]:
            self._x[i] = features
        self._lat[i] = latency_ms
        if outputs is None or error:
            self._cls[i] = -1
            self._conf[i] = np.nan
        else:
            out = np.asarray(outputs, dtype=np.float64).ravel()
            if not np.all(np.isfinite(out)):
                self.non_finite_outputs += 1
                self._cls[i], self._conf[i] = -1, np.nan
            elif out.size > 1:
                k = int(out.argmax())
                self._cls[i], self._conf[i] = k, out[k]
            else:
                p = float(out[0]) if out.size else 0.0
                self._cls[i], self._conf[i] = int(p >= 0.5), max(p, 1.0 - p)
        self._n = i + 1
        if self._n == _BLOCK:
            self._flush()

    def _flush(self) -> None:
        n = self._n
        if n == 0:
            return
        x = self._x[:n]
        for j, edges in enumerate(self.edges):
            col = x[:, j]
            self.feature_counts[j] += _counts(col, edges)
            self.feature_non_finite[j] += int(n - np.count_nonzero(np.isfinite(col)))
        cls = self._cls[:n]
        cls = cls[(cls >= 0) & (cls < self.class_counts.size)]
        self.class_counts += np.bincount(cls, minlength=self.class_counts.size)
        self.conf_counts += _counts(self._conf[:n], self.conf_edges)
        lat = self._lat[:n]
        self.lat_counts += _counts(lat, self.lat_edges)
        self.lat_sum += float(lat.sum())
        self.lat_max = max(self.lat_max, float(lat.max()))
        self._n = 0

    def window(self) -> dict[str, Any]:
        """The counts so far, as plain JSON values (the telemetry message's ``stats``)."""
        self._flush()
        return {
            "format": STATS_FORMAT,
            "count": int(self.count),
            "errors": int(self.errors),
            "non_finite_outputs": int(self.non_finite_outputs),
            "features": [[int(c) for c in fc] for fc in self.feature_counts],
            "feature_non_finite": [int(c) for c in self.feature_non_finite],
            "class_counts": [int(c) for c in self.class_counts],
            "confidence_counts": [int(c) for c in self.conf_counts],
            "latency_counts": [int(c) for c in self.lat_counts],
            "latency_sum_ms": float(self.lat_sum),
            "latency_max_ms": float(self.lat_max),
        }


def empty_window(n_bins: Sequence[int], n_classes: int) -> dict[str, Any]:
    """A window with no predictions, with ``n_bins[j]`` counts for feature ``j``."""
    return {
        "format": STATS_FORMAT,
        "count": 0,
        "errors": 0,
        "non_finite_outputs": 0,
        "features": [[0] * n for n in n_bins],
        "feature_non_finite": [0] * len(n_bins),
        "class_counts": [0] * n_classes,
        "confidence_counts": [0] * (len(CONFIDENCE_EDGES) + 1),
        "latency_counts": [0] * (len(LATENCY_EDGES_MS) + 1),
        "latency_sum_ms": 0.0,
        "latency_max_ms": 0.0,
    }


def merge_windows(windows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The sum of windows with the same shape (same variant): counts add, max is max."""
    if not windows:
        raise ValueError("nothing to merge")
    first = windows[0]
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in first.items()}
    out["features"] = [list(f) for f in first["features"]]
    for w in windows[1:]:
        if len(w["features"]) != len(out["features"]) or any(
            len(a) != len(b)
            for a, b in zip(w["features"], out["features"])  # noqa: B905
        ):
            raise ValueError("windows of different shapes cannot be merged")
        for key in ("count", "errors", "non_finite_outputs", "latency_sum_ms"):
            out[key] += w[key]
        out["latency_max_ms"] = max(out["latency_max_ms"], w["latency_max_ms"])
        for key in ("feature_non_finite", "class_counts", "confidence_counts", "latency_counts"):
            if len(w[key]) != len(out[key]):
                raise ValueError(f"windows differ in {key}")
            out[key] = [a + b for a, b in zip(out[key], w[key])]  # noqa: B905
        out["features"] = [
            [a + b for a, b in zip(fa, fb)]  # noqa: B905
            for fa, fb in zip(out["features"], w["features"])  # noqa: B905 - Python 3.9
        ]
    return out
