"""A registered version's variant, loaded for serving predictions on this machine.

:func:`load_predictor` picks a variant — the one named, or the best one a device
would run whose runtime is installed here (``tflite-int8``, ``tflite-f32``,
``onnx-int8``, ``onnx-f32``), else ``original`` — reads its verified bytes and
returns a :class:`~edgeops.serving.standalone.ServedModel` built from the
variant's metadata: its fitted feature transforms, feature names and labels.
``original`` runs the float model (scikit-learn or Keras) as training did.

:class:`PredictorCache` keeps loaded models per (model, version, variant), for
the API; it resolves the reference on every call, so a moved alias is served
from its new version on the next request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from ..errors import EdgeopsError, InvalidInput, MissingExtra
from .standalone import ModelError, ServedModel

__all__ = [
    "SERVABLE_FORMATS",
    "PredictorCache",
    "device_order",
    "load_predictor",
    "load_variant",
    "pick_variant",
    "runtime_installed",
]

ORIGINAL = "original"
SERVABLE_FORMATS = ("tflite", "onnx", "skops", "keras")  # C variants are for firmware
# runtime package (importable module) and the extra that installs it, per stored format
_RUNTIME = {
    "tflite": (("ai_edge_litert", "tflite_runtime"), "ai-edge-litert", "tensorflow"),
    "onnx": (("onnxruntime",), "onnxruntime", "onnx"),
}


def runtime_installed(fmt: str) -> bool:
    """Whether a runtime for stored format ``fmt`` (tflite, onnx) is installed here."""
    import importlib.util

    modules = _RUNTIME[fmt][0] if fmt in _RUNTIME else ()
    return any(importlib.util.find_spec(m) is not None for m in modules)


def device_order() -> list[str]:
    """Device variants, best first: TFLite ones, then ONNX ones (the rollout's preference)."""
    from ..fleet.deploy import PREFERENCE

    return [*PREFERENCE["tflite"], *PREFERENCE["onnx"]]


def pick_variant(mv: Any, wanted: str | None = None) -> Any:
    """The variant of ``mv`` to serve here: ``wanted``, or the default (module docstring)."""
    by_name = {v.name: v for v in mv.variants}
    servable = sorted(n for n, v in by_name.items() if v.format in SERVABLE_FORMATS)
    if wanted is not None:
        v = by_name.get(wanted)
        if v is None:
            raise InvalidInput(
                f"{mv.ref} has no variant {wanted!r}; choose one of: {', '.join(servable)}"
            )
        if v.format not in SERVABLE_FORMATS:
            raise InvalidInput(
                f"variant {wanted!r} of {mv.ref} is {v.format} source for microcontroller "
                f"firmware, not served over HTTP; choose one of: {', '.join(servable)}"
            )
        return v
    for name in device_order():
        v = by_name.get(name)
        if v is not None and runtime_installed(v.format):
            return v
    return by_name[ORIGINAL]


class _FloatModel:
    """The original model as a runner: ``predict`` gives its class scores."""

    def __init__(self, trained: Any) -> None:
        self._trained = trained
        self.inputs: list[Any] = []  # no tensors to describe: the feature names say it
        self.outputs: list[Any] = []
        self.runtime = "scikit-learn" if trained.flavor == "sklearn" else "keras"

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._trained.scores(x)


def _float_runner(mv: Any, variant: Any, data: bytes) -> tuple[Any, int | None]:
    from ..pipeline.trainers import Trained, load_trained

    kind = variant.meta.get("model_kind")
    if kind:
        trained = load_trained(kind, data, mv.params)
    elif variant.format == "skops":
        from ..model_io import load_sklearn

        trained = Trained("sklearn", "sklearn", load_sklearn(data), dict(mv.params))
    else:  # a Keras file registered by hand: load_trained takes any Keras kind
        trained = load_trained("keras_mlp", data, mv.params)
    n = getattr(trained.model, "n_features_in_", None)
    if n is None and trained.flavor == "keras":
        n = trained.model.inputs[0].shape[-1]
    return _FloatModel(trained), (int(n) if n else None)


def _runner(mv: Any, variant: Any, data: bytes) -> tuple[Any, int | None]:
    if variant.format in ("skops", "keras"):
        return _float_runner(mv, variant, data)
    if not runtime_installed(variant.format):
        _, package, extra = _RUNTIME[variant.format]
        raise MissingExtra(package, extra)
    from edgeops_agent.runtime import load_runner

    try:
        return load_runner(variant.format, data), None
    except ValueError as exc:  # the runtime refused the bytes
        raise EdgeopsError(f"{mv.ref} variant {variant.name} cannot be loaded: {exc}") from exc


def _serving_section(mv: Any, variant: Any) -> dict[str, Any]:
    meta = variant.meta
    return {
        "labels": meta.get("labels") or list(mv.labels or []),
        "feature_names": meta.get("feature_names") or [],
        "features": meta.get("features"),
    }


def load_predictor(ws: Any, ref: str, variant: str | None = None) -> ServedModel:
    """A ready-to-serve model for ``ref`` (``NAME@VERSION`` or ``NAME@ALIAS``)."""
    mv = ws.registry.get_version(ref)
    return load_variant(ws, mv, pick_variant(mv, variant))


def load_variant(ws: Any, mv: Any, v: Any) -> ServedModel:
    """Variant ``v`` of version ``mv``, loaded in its runtime with its serving metadata."""
    data = ws.artifacts.read_bytes(v.sha256)
    runner, n_features = _runner(mv, v, data)
    try:
        return ServedModel(
            runner, _serving_section(mv, v), model=mv.ref, variant=v.name, n_features=n_features
        )
    except ModelError as exc:
        raise EdgeopsError(str(exc)) from exc


class PredictorCache:
    """Loaded models by (model, version, variant), the least recently used dropped first."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, int, str, str], ServedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ws: Any, ref: str, variant: str | None = None) -> ServedModel:
        mv = ws.registry.get_version(ref)  # every call: an alias may have moved
        v = pick_variant(mv, variant)
        key = (mv.model.name, mv.version, v.name, v.sha256)
        with self._lock:
            served = self._items.get(key)
            if served is not None:
                self._items.move_to_end(key)
                return served
        served = load_variant(ws, mv, v)  # outside the lock: loading one model never blocks others
        with self._lock:
            served = self._items.setdefault(key, served)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return served

    def __len__(self) -> int:
        return len(self._items)
