"""Local predictions for applications on the device: the :class:`Predictor`.

``predict_rows`` takes raw samples (dicts), runs the manifest's fitted feature
transforms (``serving.features``, the same code training ran), then the model,
and labels each row from ``serving.labels``; ``predict_features`` starts from a
feature matrix. Both return ``[{"label": ..., "scores": [...]}, ...]``.

The active model is swapped atomically by the agent (:meth:`Predictor.load`);
calls in flight finish on the model they started with. Each loaded model has
its own lock because runtimes (a TFLite interpreter) are not thread-safe.
Listeners (the probation counters) get ``(features_row, outputs_row, latency_ms,
error)`` for every row predicted. Batch listeners (telemetry) get each call once:
``(model, rows, features, outputs, latency_ms)`` with the raw ``rows`` of
``predict_rows`` (None for ``predict_features``), the ``(n, k)`` features, the
``(n, m)`` outputs (None when the model raised) and the latency per row; one may
return ``{row index: sample id}`` for rows it sampled, and those results carry a
``"sample_id"`` that :meth:`Predictor.send_label` takes later.

The common call, ``predict_features`` of one float32 row, runs in C when the
extension ``edgeops_agent._fastpath`` is built (``OneRow``: the same steps as
:meth:`Predictor._finish` for one row, in one call; the model's ``runner.predict``,
``lock`` and ``labels`` are looked up once, by :meth:`Predictor.load`, so a
:class:`LoadedModel` is not to be changed once loaded). Anything else, and any
unusual outcome (the model raised, odd outputs), is the Python code below.
``EDGEOPS_PURE_PYTHON=1`` turns the C path off.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeops_protocol.baseline import labels_of
from edgeops_protocol.features import FeatureSpecError, FittedFeatures

from ._native import load_fastpath as _load_fastpath
from .errors import DeployFailed, NoModel, PredictionError
from .runtime import Runner

__all__ = ["BatchListener", "Listener", "LoadedModel", "Predictor"]

Listener = Callable[[np.ndarray, "np.ndarray | None", float, bool], None]
BatchListener = Callable[
    ["LoadedModel", "Sequence[Mapping[str, Any]] | None", np.ndarray, "np.ndarray | None", float],
    "Mapping[int, str] | None",
]
MAX_ROWS = 10_000  # one request; bounds the memory a single call can take


_fastpath = _load_fastpath()


@dataclass
class LoadedModel:
    """A runner with the manifest it was deployed with."""

    runner: Runner
    manifest: dict[str, Any]
    features: FittedFeatures | None = None
    feature_names: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    corrupt: bool = False  # simulate.corrupt_outputs_after_activation
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, runner: Runner, manifest: dict[str, Any], corrupt: bool = False) -> LoadedModel:
        """Check ``serving`` and build; :class:`DeployFailed` (step ``health``) if it is bad."""
        serving = manifest.get("serving") or {}
        features = None
        try:
            if serving.get("features"):
                features = FittedFeatures.from_dict(serving["features"])
        except FeatureSpecError as exc:
            raise DeployFailed("health", f"serving.features: {exc}") from exc
        labels = serving.get("labels") or []
        names = serving.get("feature_names") or []
        if not all(isinstance(x, str) for x in [*labels, *names]):
            raise DeployFailed("health", "serving.labels and feature_names must be strings")
        return cls(runner, manifest, features, list(names), list(labels), corrupt)

    @property
    def name(self) -> str:
        m = self.manifest["model"]
        return f"{m['name']}:{m['version']}/{m['variant']}"

    def ref(self) -> dict[str, Any]:
        m = self.manifest["model"]
        return {
            "name": m["name"],
            "version": m["version"],
            "variant": m["variant"],
            "sha256": self.manifest["artifact"]["sha256"],
            "seq": self.manifest["seq"],
        }


class Predictor:
    """Thread-safe predictions with whichever model is active."""

    def __init__(
        self, *, extra_latency_ms: float = 0.0, on_prediction: Listener | None = None
    ) -> None:
        self._model: LoadedModel | None = None
        self._extra_s = extra_latency_ms / 1000.0
        # tuples, replaced on add: a prediction iterates them without a copy or a lock
        self._listeners: tuple[Listener, ...] = (on_prediction,) if on_prediction else ()
        self._batch_listeners: tuple[BatchListener, ...] = ()
        self.label_sink: Callable[[str, str], None] | None = None  # set by the agent
        # the one-row call in C (see the module doc); the clock is the one of this moment
        self._core: Any = None
        if _fastpath is not None and not self._extra_s:
            self._core = _fastpath.OneRow(self._predict_features, self._finish, time.perf_counter)
            self._core.listeners = self._listeners
            # the C call itself, without the method's Python frame (it is the same call)
            self.predict_features = self._core  # type: ignore[method-assign]

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def load(self, model: LoadedModel | None) -> None:
        """Serve ``model`` from now on (None: serve nothing)."""
        self._model = model
        if self._core is not None:
            self._core.model = model

    def add_listener(self, listener: Listener, *, once: bool = False) -> None:
        """Call ``listener`` for every row predicted (``once``: unless it is already there)."""
        if once and listener in self._listeners:
            return
        self._listeners = (*self._listeners, listener)
        if self._core is not None:
            self._core.listeners = self._listeners

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener`` (nothing happens if it is not there)."""
        if listener in self._listeners:
            self._listeners = tuple(x for x in self._listeners if x != listener)
            if self._core is not None:
                self._core.listeners = self._listeners

    def add_batch_listener(self, listener: BatchListener) -> None:
        self._batch_listeners = (*self._batch_listeners, listener)
        if self._core is not None:
            self._core.batch_listeners = self._batch_listeners

    def send_label(self, sample_id: str, label: str) -> None:
        """Ground truth for a sampled prediction (its result's ``sample_id``), sent by the agent."""
        if self.label_sink is None:
            raise PredictionError("labels are sent by a running agent; this predictor has none")
        self.label_sink(sample_id, label)

    def predict_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Predictions for raw samples, through the model's feature transforms."""
        model = self._require()
        if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)) or not rows:
            raise PredictionError("rows must be a non-empty list of objects")
        if len(rows) > MAX_ROWS:
            raise PredictionError(f"at most {MAX_ROWS} rows per call")
        if not all(isinstance(r, Mapping) for r in rows):
            raise PredictionError("every row must be an object of column -> value")
        try:
            if model.features is not None:
                matrix = model.features.transform_rows(rows)
            elif model.feature_names:
                matrix = np.array(
                    [[float(row[n]) for n in model.feature_names] for row in rows], np.float32
                )
            else:
                raise PredictionError(
                    "this model's manifest has no serving.features; use predict_features"
                )
        except FeatureSpecError as exc:
            raise PredictionError(str(exc)) from exc
        except KeyError as exc:
            raise PredictionError(f"missing column {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise PredictionError(f"rows are not numeric where they must be: {exc}") from exc
        return self._predict(model, matrix, rows)

    def predict_features(self, matrix: Any) -> list[dict[str, Any]]:
        """Predictions for a ``(n, features)`` matrix (or one row)."""
        core = self._core
        if core is not None:
            return core(matrix)  # type: ignore[no-any-return]
        return self._predict_features(matrix)

    def _predict_features(self, matrix: Any) -> list[dict[str, Any]]:
        model = self._require()
        try:
            x = np.asarray(matrix, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise PredictionError(f"features must be a numeric matrix: {exc}") from exc
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim < 2 or len(x) == 0 or len(x) > MAX_ROWS:
            raise PredictionError(f"features must be 1 to {MAX_ROWS} rows")
        return self._predict(model, x)

    def _require(self) -> LoadedModel:
        model = self._model
        if model is None:
            raise NoModel("no model is active on this device yet")
        return model

    def _predict(
        self,
        model: LoadedModel,
        x: np.ndarray,
        rows: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        start = time.perf_counter()
        error: Exception | None = None
        out: Any = None
        try:
            with model.lock:
                out = model.runner.predict(x)
        except Exception as exc:  # the model failed: counted, then reported to the caller
            error = exc
        return self._finish(model, x, rows, out, error, start)

    def _finish(
        self,
        model: LoadedModel,
        x: np.ndarray,
        rows: Sequence[Mapping[str, Any]] | None,
        out: Any,
        error: Exception | None,
        start: float,
    ) -> list[dict[str, Any]]:
        """After the model ran (``out``, or ``error``): checks, listeners, results."""
        if error is None:
            try:
                out = np.asarray(out, dtype=np.float32)
                if self._extra_s:
                    time.sleep(self._extra_s)
                if model.corrupt:
                    out = np.full_like(out, np.nan)
                if len(out) != len(x):
                    raise ValueError(f"the model returned {len(out)} rows for {len(x)}")
            except Exception as exc:  # the model failed: counted, then reported to the caller
                error = exc
        n = len(x)
        latency_ms = (time.perf_counter() - start) * 1000.0 / n
        if error is not None or out is None:
            self._notify(x, None, latency_ms, [True] * n)
            self._notify_batch(model, rows, x, None, latency_ms)
            raise PredictionError(f"the model failed: {error}") from error
        if out.ndim != 2 or out.shape[1] == 0:
            return self._results_other(model, rows, x, out, latency_ms)
        if n == 1:  # the common case, in plain Python: numpy calls cost more for 1 row
            scores = out.tolist()[0]
            total = sum(scores)  # finite if and only if every score is (or it overflowed)
            ok = total - total == 0.0 or all(map(math.isfinite, scores))
            if self._listeners:
                x0, out0, err = x[0], out[0], not ok
                for listener in self._listeners:
                    try:
                        listener(x0, out0, latency_ms, err)
                    except Exception:  # a listener must never break a prediction
                        continue
            sampled = (
                self._notify_batch(model, rows, x, out, latency_ms)
                if self._batch_listeners
                else None
            )
            label: Any = None
            if ok:
                k = scores.index(max(scores)) if len(scores) > 1 else int(scores[0] >= 0.5)
                label = model.labels[k] if 0 <= k < len(model.labels) else k
            else:
                scores = [v if math.isfinite(v) else None for v in scores]
            results = [{"label": label, "scores": scores}]
            for i, sample_id in (sampled or {}).items():
                results[i]["sample_id"] = sample_id
            return results
        finite = np.isfinite(out)
        row_ok = finite.all(axis=1)
        all_ok = bool(row_ok.all())
        if self._listeners:
            self._notify(x, out, latency_ms, [False] * n if all_ok else (~row_ok).tolist())
        sampled = (
            self._notify_batch(model, rows, x, out, latency_ms) if self._batch_listeners else None
        )
        if out.shape[1] > 1:  # labels_of, with non-finite scores as 0
            label_idx = (out if all_ok else np.where(finite, out, 0.0)).argmax(axis=1).tolist()
        else:
            label_idx = (out[:, 0] >= 0.5).tolist()
        labels, n_labels = model.labels, len(model.labels)
        all_scores = out.tolist()
        if all_ok:
            results = [
                {"label": labels[k] if 0 <= k < n_labels else int(k), "scores": row}
                for k, row in zip(label_idx, all_scores)  # noqa: B905 - Python 3.9
            ]
        else:
            results = []
            for k, row, ok in zip(label_idx, all_scores, row_ok.tolist()):  # noqa: B905
                if ok:
                    results.append(
                        {"label": labels[k] if 0 <= k < n_labels else int(k), "scores": row}
                    )
                else:
                    scores = [v if math.isfinite(v) else None for v in row]
                    results.append({"label": None, "scores": scores})
        for i, sample_id in (sampled or {}).items():
            results[i]["sample_id"] = sample_id
        return results

    def _results_other(
        self,
        model: LoadedModel,
        rows: Sequence[Mapping[str, Any]] | None,
        x: np.ndarray,
        out: np.ndarray,
        latency_ms: float,
    ) -> list[dict[str, Any]]:
        """Outputs that are not ``(n, k)`` scores with ``k >= 1``: the general path."""
        flat = out.reshape(len(out), -1)
        finite = np.isfinite(flat).all(axis=1)
        self._notify(x, flat, latency_ms, [not bool(f) for f in finite])
        sampled = (
            self._notify_batch(model, rows, x, flat, latency_ms) if self._batch_listeners else None
        )
        label_idx = labels_of(np.where(np.isfinite(out), out, 0.0))
        results = []
        for i in range(len(flat)):
            label: Any = None
            if finite[i]:
                k = int(label_idx[i])
                label = model.labels[k] if 0 <= k < len(model.labels) else k
            scores = [v if math.isfinite(v) else None for v in flat[i].tolist()]
            results.append({"label": label, "scores": scores})
        for i, sample_id in (sampled or {}).items():
            results[i]["sample_id"] = sample_id
        return results

    def _notify(
        self, x: np.ndarray, out: np.ndarray | None, latency_ms: float, errors: list[bool]
    ) -> None:
        for listener in self._listeners:
            for i, err in enumerate(errors):
                try:
                    listener(x[i], None if out is None else out[i], latency_ms, err)
                except Exception:  # a listener must never break a prediction
                    continue

    def _notify_batch(
        self,
        model: LoadedModel,
        rows: Sequence[Mapping[str, Any]] | None,
        x: np.ndarray,
        out: np.ndarray | None,
        latency_ms: float,
    ) -> dict[int, str] | None:
        sampled: dict[int, str] | None = None
        for listener in self._batch_listeners:
            try:
                ids = listener(model, rows, x, out, latency_ms)
            except Exception:  # a listener must never break a prediction
                continue
            if ids:
                sampled = {**sampled, **ids} if sampled else dict(ids)
        return sampled
