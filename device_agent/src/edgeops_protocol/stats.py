"""On-device statistics windows: mergeable histograms over the baseline's bins.

A :class:`WindowStats` is built from a variant's baseline profile (shipped in
the manifest's ``serving.baseline``) and counts, per prediction, what the model
saw and said: a histogram per input feature (the baseline's edges, with under-
and overflow; non-finite values counted apart), the predicted class counts, a
confidence histogram, a latency histogram, errors and non-finite outputs. All of
it is sums of counts, so windows merge across time and devices by adding
(:func:`merge_windows`) and drift can be computed at any level without raw data
leaving the device.

Two implementations count the same windows, byte for byte:

* :class:`NativeWindowStats`, the accumulator of the C extension
  ``edgeops_protocol._faststats`` (built with the package when a C compiler is
  there): :meth:`~PyWindowStats.update` is one C call that counts the scores and
  the latency and bins the row's features (a vectorized comparison with each
  feature's thresholds, or a binary search for features with many edges; float32
  rows wait in a buffer of 64 rows and are binned a buffer at a time);
* :class:`PyWindowStats`, numpy only: ``update`` copies the row into preallocated
  buffers (a block of 1,024 rows, fewer for models with more than 256 features)
  and the outputs' finiteness, argmax and confidence and the histograms of all
  features are computed once a block, with a few whole-block numpy calls.

:data:`WindowStats` is the native class when the extension loads (and the
environment does not set ``EDGEOPS_PURE_PYTHON=1``), else the Python one; a
baseline whose edges are not the protocol's (finite, strictly increasing) is
always counted by the Python class. :meth:`~PyWindowStats.update_many` counts a
batch of rows at once. :meth:`~PyWindowStats.window` ends the block and returns
the window dict (the ``stats`` part of a telemetry message, docs/protocol.md),
:meth:`~PyWindowStats.window_json` the same as compact JSON bytes.

The counts, and the latency sum to the last bit, are those of the plain
accumulator this replaced (per row: argmax of the outputs; per block of 64 rows:
a histogram per feature, the latencies summed with numpy and added up): the
latencies are still summed in chunks of 64 rows from the last block end.

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

import copy
import json
import os
import types
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .baseline import CONFIDENCE_EDGES
from .histogram import bin_index

__all__ = [
    "LATENCY_EDGES_MS",
    "NATIVE",
    "STATS_FORMAT",
    "NativeWindowStats",
    "PyWindowStats",
    "WindowStats",
    "empty_window",
    "merge_windows",
]

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
_FLOAT32 = np.dtype(np.float32)
_CHUNK = 64  # latencies are summed in chunks of this many rows (the window's latency_sum_ms)
_BLOCK = 1024  # rows buffered between flushes (a multiple of _CHUNK) ...
_BLOCK_VALUES = 1 << 18  # ... or fewer, for models with many features


def _counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    return np.bincount(bin_index(finite, edges), minlength=edges.size + 1)


def _float32_ceiling(values: np.ndarray) -> np.ndarray:
    """The smallest float32 at least as large as each value: for a float32 ``x``,
    ``x >= v`` exactly when ``x >= _float32_ceiling(v)``."""
    with np.errstate(over="ignore"):
        out = values.astype(np.float32)
    low = out.astype(np.float64) < values
    out[low] = np.nextafter(out[low], np.float32(np.inf))
    return out


def _thresholds(edges: list[np.ndarray], sizes: list[int]) -> np.ndarray | None:
    """``(max edges, features)`` thresholds to bin all features at once, or None.

    For edges that are finite and strictly increasing (the protocol's), a finite value's
    bin is how many of its feature's thresholds it reaches (``>=``): the edges but the
    last, then the smallest double above the last edge (the last interior bin is
    closed); shorter features are padded with +inf, which no finite value reaches.
    """
    if not edges or not all(e.ndim == 1 for e in edges) or min(sizes) < 1:
        return None
    flat = np.concatenate(edges)
    ends = np.cumsum(sizes)
    increasing = np.diff(flat) > 0
    increasing[ends[:-1] - 1] = True  # from one feature's last edge to the next's first
    if not (np.all(np.isfinite(flat)) and np.all(increasing)):
        return None
    starts = np.repeat(ends - sizes, sizes)
    flat[ends - 1] = np.nextafter(flat[ends - 1], np.inf)
    t = np.full((max(sizes), len(edges)), np.inf)
    t[np.arange(flat.size) - starts, np.repeat(np.arange(len(edges)), sizes)] = flat
    return t


def _read_baseline(obj: Any, baseline: Mapping[str, Any]) -> None:
    """The attributes both implementations take from the baseline."""
    feats = baseline.get("features", [])
    obj.names = [str(f["name"]) for f in feats]
    obj.edges = [np.asarray(f["edges"], dtype=np.float64) for f in feats]
    outputs = baseline.get("outputs", {})
    obj.labels = [str(x) for x in outputs.get("labels", [])]
    obj.conf_edges = np.asarray(outputs.get("confidence_edges", CONFIDENCE_EDGES))
    obj.lat_edges = np.asarray(LATENCY_EDGES_MS)
    obj._nf = len(obj.edges)
    # what the window's JSON looks like: counts per feature, classes, confidence bins
    obj.layout = (
        tuple(e.size + 1 for e in obj.edges),
        max(1, len(obj.labels)),
        obj.conf_edges.size + 1,
    )


class PyWindowStats:
    """Counts for one window of predictions of one model variant (numpy only)."""

    def __init__(self, baseline: Mapping[str, Any]) -> None:
        _read_baseline(self, baseline)
        sizes = [e.size for e in self.edges]
        self._bounds = []  # where each feature's counts are in _fc
        at = 0
        for size in sizes:
            self._bounds.append((at, at + size + 1))
            at += size + 1
        self._total = at
        # rows a block: 1,024, fewer with more than 256 features (a multiple of _CHUNK)
        self._block = max(_CHUNK, min(_BLOCK, _BLOCK_VALUES // max(self._nf, 1)) // _CHUNK * _CHUNK)
        self._thresholds = _thresholds(self.edges, sizes)
        self._thresholds32 = None
        if self._thresholds is not None:
            self._offsets = np.array([a for a, _ in self._bounds], dtype=np.intp)
            self._thresholds32 = _float32_ceiling(self._thresholds)
        # float32 rows (what models take) are buffered as float32 and compared with the
        # thresholds rounded up to float32, which is exact for them; a row of another type
        # turns the buffer into float64 until the window is released
        self._narrow = False
        self._cap = 0  # rows the buffers hold; they are made at the first update
        self._m = -1  # scores per row in the outputs buffer (set by the first outputs)
        self._x = self._lat = self._out = self._kind = self._pcls = self._pconf = None
        self._n = 0
        self._spare: list[tuple[Any, ...]] = []  # released buffers; fresh() copies share it
        self.reset()

    def fresh(self) -> PyWindowStats:
        """An empty window of the same baseline (it shares the edges, not the counts)."""
        new = copy.copy(self)
        new._cap = new._n = 0
        new._x = new._lat = new._out = new._kind = new._pcls = new._pconf = None
        new.reset()
        return new

    @property
    def feature_counts(self) -> list[np.ndarray]:
        """Each feature's counts so far (views; buffered rows are not in them yet)."""
        return [self._fc[a:b] for a, b in self._bounds]

    def reset(self) -> None:
        self.count = 0
        self.errors = 0
        self.non_finite_outputs = 0
        self._fc = np.zeros(self._total, dtype=np.int64)  # all features' counts, in a row
        self.feature_non_finite = np.zeros(len(self.edges), dtype=np.int64)
        self.class_counts = np.zeros(max(1, len(self.labels)), dtype=np.int64)
        self.conf_counts = np.zeros(self.conf_edges.size + 1, dtype=np.int64)
        self.lat_counts = np.zeros(self.lat_edges.size + 1, dtype=np.int64)
        self.lat_sum = 0.0
        self.lat_max = 0.0
        self._drop()

    def _drop(self) -> None:
        """Forget the buffered rows."""
        if self._n and self._special:
            self._kind[: self._n] = 0
        self._n = 0
        self._special = 0  # buffered rows whose class and confidence are already known

    def _make_room(self) -> int:
        """Flush full buffers, or make them; the row index to write next."""
        if self._n:
            self._flush()
        else:
            self._cap = rows = self._block
            self._narrow = self._thresholds is not None
            x_type = np.float32 if self._narrow else np.float64
            spare = self._take_spare(x_type)
            if spare is not None:  # a released window's (its _kind is all False again)
                self._x, self._lat, self._kind, self._pcls, self._pconf, self._out = spare
            else:
                self._x = np.empty((rows, self._nf), dtype=x_type)
                self._lat = np.empty(rows, dtype=np.float64)
                self._kind = np.zeros(rows, dtype=np.bool_)
                self._pcls = np.empty(rows, dtype=np.int64)
                self._pconf = np.empty(rows, dtype=np.float64)
                self._out = None
            if self._m > 0 and (self._out is None or self._out.shape[1] != self._m):
                self._out = np.zeros((rows, self._m), dtype=np.float64)
        return 0

    def _take_spare(self, x_type: Any) -> tuple[Any, ...] | None:
        while True:
            try:
                spare = self._spare.pop()  # atomic: no two windows get the same buffers
            except IndexError:
                return None
            if spare[0].dtype == x_type:
                return spare

    def release(self) -> None:
        """Count the buffered rows and let go of the buffers (a window that is done): a
        :meth:`fresh` window of the same baseline reuses them. Like :meth:`window`, this
        ends the block; a later update takes buffers again."""
        self._flush()
        if self._cap and not self._spare:  # for the next window of the same baseline
            self._spare.append((self._x, self._lat, self._kind, self._pcls, self._pconf, self._out))
        self._cap = 0
        self._x = self._lat = self._out = self._kind = self._pcls = self._pconf = None

    def update(
        self,
        features: np.ndarray,
        outputs: np.ndarray | None,
        latency_ms: float,
        error: bool = False,
    ) -> None:
        """Count one prediction (``outputs`` is None when the model raised).

        ``features`` is the row, ``(k,)`` or ``(1, k)``; ``outputs`` its scores, ``(m,)``
        or ``(1, m)`` (one score: a sigmoid, class 1 if it is at least 0.5)."""
        self.count += 1
        if error or outputs is None:
            self.errors += 1
            outputs = None
        i = self._n
        if i == self._cap:
            i = self._make_room()
        if self._nf:
            if self._narrow and (
                features.__class__ is not np.ndarray or features.dtype is not _FLOAT32
            ):
                self._widen(features)
            self._x[i] = features
        self._lat[i] = latency_ms
        if outputs is None:
            self._known(i, -1, np.nan)
        elif outputs.__class__ is not np.ndarray or outputs.size != self._m:
            self._other_outputs(i, outputs)
        else:
            try:
                self._out[i] = outputs  # (m,), or (1, m)
            except ValueError:  # e.g. (m, 1)
                self._other_outputs(i, outputs)
        self._n = i + 1

    def _widen(self, features: Any) -> None:
        """Rows that are not float32 from now on: a float64 buffer."""
        if not (isinstance(features, np.ndarray) and features.dtype == np.float32):
            wide = np.empty(self._x.shape, dtype=np.float64)
            wide[: self._n] = self._x[: self._n]
            self._x, self._narrow = wide, False

    def _known(self, i: int, cls: int, conf: float) -> None:
        self._kind[i] = True
        self._pcls[i] = cls
        self._pconf[i] = conf
        self._special += 1

    def _other_outputs(self, i: int, outputs: Any) -> None:
        """Outputs that are not a row of the outputs buffer's width: counted here."""
        out = np.asarray(outputs, dtype=np.float64).ravel()
        if self._m < 0 and out.size > 0:  # the first outputs: the buffer's width
            self._m = out.size
            self._out = np.zeros((self._cap, self._m), dtype=np.float64)
        if out.size == self._m:
            self._out[i] = out
        elif not np.all(np.isfinite(out)):
            self.non_finite_outputs += 1
            self._known(i, -1, np.nan)
        elif out.size > 1:
            k = int(out.argmax())
            self._known(i, k, out[k])
        else:
            p = float(out[0]) if out.size else 0.0
            self._known(i, int(p >= 0.5), max(p, 1.0 - p))

    def update_many(
        self,
        features: np.ndarray,
        outputs: np.ndarray | None,
        latency_ms: float | np.ndarray,
        errors: bool | np.ndarray = False,
    ) -> None:
        """Count a batch: the same as ``update(features[i], outputs[i], latency_ms[i],
        errors[i])`` for every row ``i`` (``outputs`` None: the model raised on all of them;
        ``latency_ms`` and ``errors`` are one value for all rows or one per row)."""
        x = np.asarray(features)
        n = len(x)
        lat = np.asarray(latency_ms, dtype=np.float64)
        err = np.asarray(errors, dtype=np.bool_)
        if lat.shape not in ((), (n,)) or err.shape not in ((), (n,)):
            raise ValueError(f"latency_ms and errors must be one value or {n}")
        out = None if outputs is None else np.asarray(outputs, dtype=np.float64)
        if (
            (self._nf and (x.ndim != 2 or x.shape[1] not in (1, self._nf)))
            or (out is not None and (out.ndim != 2 or len(out) != n or out.shape[1] < 1))
            or (out is not None and self._m > 0 and out.shape[1] != self._m)
        ):
            for i in range(n):  # rows of other shapes: one at a time
                o = None if outputs is None else outputs[i]
                self.update(x[i], o, lat[i] if lat.ndim else lat, err[i] if err.ndim else err)
            return
        if out is not None and self._m < 0:
            self._m = out.shape[1]
            if self._cap:
                self._out = np.zeros((self._cap, self._m), dtype=np.float64)
        a = 0
        while a < n:
            i = self._n
            if i == self._cap:
                i = self._make_room()
            b = min(n, a + self._cap - i)
            k, j = b - a, i + b - a
            if self._nf:
                if self._narrow and x.dtype is not _FLOAT32:
                    self._widen(x)
                self._x[i:j] = x[a:b]
            self._lat[i:j] = lat[a:b] if lat.ndim else lat
            self.count += k
            if out is None:
                bad = np.arange(i, j)
            else:
                self._out[i:j] = out[a:b]
                bad = np.flatnonzero(err[a:b]) + i if err.ndim else np.arange(i, j if err else i)
            if bad.size:
                self.errors += bad.size
                self._kind[bad] = True
                self._pcls[bad] = -1
                self._pconf[bad] = np.nan
                self._special += bad.size
            self._n = j
            a = b

    def _flush(self) -> None:
        n = self._n
        if n == 0:
            return
        if self._nf:
            self._count_features(self._x[:n])
        # outputs: finiteness, class and confidence of the rows whose outputs are buffered
        known = self._kind[:n] if self._special else None
        cls_parts, conf_parts = [], []
        if self._out is not None and (known is None or self._special < n):
            out = self._out[:n]
            ok = np.isfinite(out).all(axis=1)
            if known is not None:
                self.non_finite_outputs += int(np.count_nonzero(~ok & ~known))
                ok &= ~known
            else:
                self.non_finite_outputs += n - int(np.count_nonzero(ok))
            out = out[ok]
            if self._m > 1:
                cls = out.argmax(axis=1)
                conf = out[np.arange(len(out)), cls]
            else:
                p = out[:, 0]
                cls = (p >= 0.5).astype(np.int64)
                conf = np.maximum(p, 1.0 - p)
            cls_parts.append(cls)
            conf_parts.append(conf)
        if known is not None:
            cls_parts.append(self._pcls[:n][known])
            conf_parts.append(self._pconf[:n][known])
        cls = np.concatenate(cls_parts) if len(cls_parts) > 1 else cls_parts[0]
        cls = cls[(cls >= 0) & (cls < self.class_counts.size)]
        self.class_counts += np.bincount(cls, minlength=self.class_counts.size)
        conf = np.concatenate(conf_parts) if len(conf_parts) > 1 else conf_parts[0]
        self.conf_counts += _counts(conf, self.conf_edges)
        lat = self._lat[:n]
        self.lat_counts += _counts(lat, self.lat_edges)
        lat_sum, lat_max = self.lat_sum, self.lat_max
        for a in range(0, n, _CHUNK):  # as 64-row blocks were: sum and max per chunk
            chunk = lat[a : a + _CHUNK]
            lat_sum += float(chunk.sum())
            lat_max = max(lat_max, float(chunk.max()))
        self.lat_sum, self.lat_max = lat_sum, lat_max
        self._drop()

    def _count_features(self, x: np.ndarray) -> None:
        n = len(x)
        t = self._thresholds32 if x.dtype == _FLOAT32 else self._thresholds
        if t is None:  # edges the protocol does not allow: one feature at a time
            for j, (edges, (a, b)) in enumerate(zip(self.edges, self._bounds)):  # noqa: B905
                col = x[:, j]
                self._fc[a:b] += _counts(col, edges)
                self.feature_non_finite[j] += int(n - np.count_nonzero(np.isfinite(col)))
            return
        idx = np.zeros(x.shape, dtype=np.uint8 if len(t) < 255 else np.intp)
        reached = np.empty(x.shape, dtype=np.bool_)
        for row in t:
            np.greater_equal(x, row, out=reached)
            np.add(idx, reached.view(np.uint8), out=idx)
        flat = idx + self._offsets  # index into all features' counts
        finite = np.isfinite(x)
        if not finite.all():
            flat[~finite] = self._total  # not binned
            self.feature_non_finite += n - np.count_nonzero(finite, axis=0)
        self._fc += np.bincount(flat.ravel(), minlength=self._total + 1)[: self._total]

    def window(self) -> dict[str, Any]:
        """The counts so far, as plain JSON values (the telemetry message's ``stats``)."""
        self._flush()
        counts = self._fc.tolist()
        return {
            "format": STATS_FORMAT,
            "count": int(self.count),
            "errors": int(self.errors),
            "non_finite_outputs": int(self.non_finite_outputs),
            "features": [counts[a:b] for a, b in self._bounds],
            "feature_non_finite": self.feature_non_finite.tolist(),
            "class_counts": self.class_counts.tolist(),
            "confidence_counts": self.conf_counts.tolist(),
            "latency_counts": self.lat_counts.tolist(),
            "latency_sum_ms": float(self.lat_sum),
            "latency_max_ms": float(self.lat_max),
        }

    def window_json(self) -> bytes:
        """:meth:`window` as compact JSON (``ValueError`` for a non-finite latency)."""
        return json.dumps(self.window(), separators=(",", ":"), allow_nan=False).encode()


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


# --- the native accumulator ----------------------------------------------------------------


def _row64(features: Any, n: int) -> np.ndarray:
    """A row that is not an ``(..., 1, n)`` float32/float64 array, as the Python class
    stores it: assigned (numpy's broadcasting and conversions) into ``n`` float64."""
    row = np.empty(n, dtype=np.float64)
    row[...] = features
    return row


def _out64(outputs: Any) -> np.ndarray:
    """Scores that are not a float32/float64 array, as the Python class reads them."""
    return np.ascontiguousarray(np.asarray(outputs, dtype=np.float64).ravel())


def _protocol_edges(edges: np.ndarray) -> bool:
    return bool(
        edges.ndim == 1
        and edges.size >= 1
        and np.all(np.isfinite(edges))
        and np.all(np.diff(edges) > 0)
    )


def _load_native() -> Any:
    if os.environ.get("EDGEOPS_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _faststats
    except ImportError:  # not built (no C compiler at install time), or numpy's layout changed
        return None
    _faststats._set_helpers(_row64, _out64)
    return _faststats


_native = _load_native()
NATIVE = _native is not None  # WindowStats is the C accumulator

if _native is not None:

    class NativeWindowStats(_native.Window):  # type: ignore[name-defined,misc]
        """Counts for one window of predictions of one model variant, in C.

        The same interface and the same windows as :class:`PyWindowStats`. A baseline
        whose edges are not finite and strictly increasing gets a :class:`PyWindowStats`
        instead. ``count``, ``errors``, ``non_finite_outputs`` are read-only here.
        """

        def __new__(cls, baseline: Mapping[str, Any]) -> Any:
            probe = types.SimpleNamespace()
            _read_baseline(probe, baseline)
            if not all(_protocol_edges(e) for e in [*probe.edges, probe.conf_edges]):
                return PyWindowStats(baseline)
            self = super().__new__(
                cls,
                [e.tolist() for e in probe.edges],
                probe.conf_edges.tolist(),
                max(1, len(probe.labels)),
                LATENCY_EDGES_MS,
            )
            self.__dict__.update(vars(probe))
            return self

        def __init__(self, baseline: Mapping[str, Any]) -> None:
            pass  # __new__ did it

        def fresh(self) -> NativeWindowStats:
            """An empty window of the same baseline (it shares the edges, not the counts)."""
            new = self._fresh()
            new.__dict__.update(self.__dict__)
            return new

        @property
        def feature_counts(self) -> list[np.ndarray]:
            """Each feature's counts so far (copies)."""
            return [np.array(c, dtype=np.int64) for c in self._arrays()[0]]

        @property
        def feature_non_finite(self) -> np.ndarray:
            return np.array(self._arrays()[1], dtype=np.int64)

        @property
        def class_counts(self) -> np.ndarray:
            return np.array(self._arrays()[2], dtype=np.int64)

        @property
        def conf_counts(self) -> np.ndarray:
            return np.array(self._arrays()[3], dtype=np.int64)

        @property
        def lat_counts(self) -> np.ndarray:
            return np.array(self._arrays()[4], dtype=np.int64)

        def update_many(
            self,
            features: np.ndarray,
            outputs: np.ndarray | None,
            latency_ms: float | np.ndarray,
            errors: bool | np.ndarray = False,
        ) -> None:
            """Count a batch: the same as ``update(features[i], outputs[i], latency_ms[i],
            errors[i])`` for every row ``i`` (``outputs`` None: the model raised on all of
            them; ``latency_ms`` and ``errors`` are one value for all rows or one per row)."""
            x = np.asarray(features)
            n = len(x)
            lat = np.asarray(latency_ms, dtype=np.float64)
            err = np.asarray(errors, dtype=np.bool_)
            if lat.shape not in ((), (n,)) or err.shape not in ((), (n,)):
                raise ValueError(f"latency_ms and errors must be one value or {n}")
            out = None if outputs is None else np.asarray(outputs)
            if out is not None and out.dtype != np.float32:
                out = np.asarray(out, dtype=np.float64)
            nf = self._nf
            if (nf and (x.ndim != 2 or x.shape[1] not in (1, nf))) or (
                out is not None and (out.ndim != 2 or len(out) != n or out.shape[1] < 1)
            ):
                for i in range(n):  # rows of other shapes: one at a time
                    o = None if outputs is None else outputs[i]
                    self.update(x[i], o, lat[i] if lat.ndim else lat, err[i] if err.ndim else err)
                return
            lat_arg = float(lat) if not lat.ndim else lat
            err_arg = bool(err) if not err.ndim else err
            try:  # as they are, when they are C-contiguous float32/float64 (checked in C)
                self._rows(n, x if nf else None, out, lat_arg, err_arg)
                return
            except TypeError:  # others: converted (nothing was counted)
                pass
            if nf:
                x = np.require(
                    np.broadcast_to(x, (n, nf)),
                    np.float32 if x.dtype == np.float32 else np.float64,
                    ("C", "A"),
                )
            if out is not None:
                out = np.require(out, out.dtype, ("C", "A"))
            if lat.ndim:
                lat_arg = np.require(lat, np.float64, ("C", "A"))
            if err.ndim:
                err_arg = np.require(err, np.bool_, ("C", "A"))
            self._rows(n, x if nf else None, out, lat_arg, err_arg)

    WindowStats: Any = NativeWindowStats
else:
    NativeWindowStats = None  # type: ignore[assignment,misc]
    WindowStats = PyWindowStats
