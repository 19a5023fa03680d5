"""The pipeline file: its fields, defaults, and validation with errors that name the field.

.. code-block:: yaml

    name: wrist-har                 # model to register (required)
    description: activity classifier
    data: sensors@1                 # data version, NAME[@VERSION] (required)
    label: label                    # label column (required)
    features: wrist@1               # feature version; default "auto": every numeric column
    split: {test_size: 0.25, seed: 42, stratify: true}
    model:
      kind: random_forest           # see MODEL_KINDS
      params: {n_estimators: 50, max_depth: 8}
      seed: 0
    export: [onnx-f32, onnx-int8, c-emlearn]
    calibration: {samples: 300, seed: 0}
    gates:
      min_accuracy: 0.9             # original and every variant
      max_accuracy_drop: 0.01       # variant accuracy below the original's (fraction)
      min_agreement: 0.98           # variant predictions equal to the original's
      max_size_bytes: 200000        # every variant
      max_latency_ms: 5.0           # p95 of one inference, every variant
    alias: staging                  # set on the registered version (optional)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInput
from ..fsutil import load_document
from ..refs import Ref, check_alias, check_name

__all__ = [
    "EXPORT_FORMATS",
    "GATES",
    "KERAS_KINDS",
    "MODEL_KINDS",
    "SKLEARN_KINDS",
    "PipelineSpec",
    "load_pipeline",
    "parse_pipeline",
]

SKLEARN_KINDS = ("logistic_regression", "random_forest", "gradient_boosting", "mlp")
KERAS_KINDS = ("keras_mlp", "keras_cnn1d")
MODEL_KINDS = SKLEARN_KINDS + KERAS_KINDS
EXPORT_FORMATS = (
    "tflite-f32",
    "tflite-int8",
    "c-tflm",
    "tflm",
    "onnx-f32",
    "onnx-int8",
    "c-emlearn",
    "emlearn-loadable",
)
GATES = ("min_accuracy", "max_accuracy_drop", "min_agreement", "max_size_bytes", "max_latency_ms")
_TOP = (
    "name",
    "description",
    "data",
    "label",
    "features",
    "split",
    "model",
    "export",
    "calibration",
    "gates",
    "alias",
)


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    data: str
    label: str
    model_kind: str
    model_params: dict[str, Any] = field(default_factory=dict)
    model_seed: int = 0
    features: str = "auto"
    description: str = ""
    test_size: float = 0.25
    split_seed: int = 42
    stratify: bool = True
    export: tuple[str, ...] = ()
    calibration_samples: int = 300
    calibration_seed: int = 0
    gates: dict[str, float] = field(default_factory=dict)
    alias: str | None = None
    source: str = ""  # the file's text, recorded on the run

    @property
    def is_keras(self) -> bool:
        return self.model_kind in KERAS_KINDS

    @property
    def split(self) -> dict[str, Any]:
        return {"test_size": self.test_size, "seed": self.split_seed, "stratify": self.stratify}


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidInput(f"pipeline field {where!r} must be a mapping")
    return value


def _keys(obj: dict, where: str, allowed: tuple[str, ...]) -> None:
    for key in obj:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise InvalidInput(
                f"pipeline has an unknown field {prefix}{key!r}; allowed: {', '.join(allowed)}"
            )


def _number(value: Any, where: str, lo: float, hi: float, integer: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    ):
        kind = "an integer" if integer else "a number"
        raise InvalidInput(f"pipeline field {where!r} must be {kind}")
    if not lo <= value <= hi:
        raise InvalidInput(f"pipeline field {where!r} must be between {lo} and {hi}")
    return value


def _ref(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"pipeline field {where!r} must be NAME or NAME@VERSION")
    Ref.parse(value)
    return value


def parse_pipeline(raw: Any, source: str = "") -> PipelineSpec:
    """Validate a parsed pipeline file; every error names the field."""
    obj = _mapping(raw, "(top level)")
    _keys(obj, "", _TOP)
    for req in ("name", "data", "label", "model"):
        if req not in obj:
            raise InvalidInput(f"pipeline is missing the field {req!r}")
    name = check_name(str(obj["name"]), "pipeline field 'name'")
    label = obj["label"]
    if not isinstance(label, str) or not label:
        raise InvalidInput("pipeline field 'label' must be a column name")
    features = obj.get("features", "auto")
    if features != "auto":
        features = _ref(features, "features")

    model = _mapping(obj["model"], "model")
    _keys(model, "model", ("kind", "params", "seed"))
    kind = model.get("kind")
    if kind not in MODEL_KINDS:
        raise InvalidInput(
            f"pipeline field 'model.kind' is {kind!r}; use one of {', '.join(MODEL_KINDS)}"
        )
    params = _mapping(model.get("params", {}), "model.params")
    seed = int(_number(model.get("seed", 0), "model.seed", 0, 2**31 - 1, integer=True))

    split = _mapping(obj.get("split", {}), "split")
    _keys(split, "split", ("test_size", "seed", "stratify"))
    test_size = float(_number(split.get("test_size", 0.25), "split.test_size", 0.05, 0.9))
    split_seed = int(_number(split.get("seed", 42), "split.seed", 0, 2**31 - 1, integer=True))
    stratify = split.get("stratify", True)
    if not isinstance(stratify, bool):
        raise InvalidInput("pipeline field 'split.stratify' must be true or false")

    export = obj.get("export", [])
    if not isinstance(export, list) or not all(isinstance(e, str) for e in export):
        raise InvalidInput("pipeline field 'export' must be a list of formats")
    for fmt in export:
        if fmt not in EXPORT_FORMATS:
            raise InvalidInput(
                f"pipeline field 'export' has unknown format {fmt!r}; "
                f"use {', '.join(EXPORT_FORMATS)}"
            )
    keras_only = {"tflite-f32", "tflite-int8", "c-tflm", "tflm"}
    if kind in SKLEARN_KINDS and "tflm" in export:
        raise InvalidInput(
            "pipeline field 'export': tflm is the tflite-int8 flatbuffer, which only a Keras "
            f"model makes (model.kind keras_mlp or keras_cnn1d, not {kind}); scikit-learn "
            "models go to microcontrollers as emlearn-loadable"
        )
    if kind in SKLEARN_KINDS and keras_only & set(export):
        bad = sorted(keras_only & set(export))[0]
        raise InvalidInput(
            f"pipeline field 'export': {bad} needs a Keras model (model.kind keras_mlp or "
            f"keras_cnn1d); scikit-learn models export to onnx-f32, onnx-int8, c-emlearn, "
            "emlearn-loadable"
        )
    emlearn_only = sorted({"c-emlearn", "emlearn-loadable"} & set(export))
    if kind in KERAS_KINDS and emlearn_only:
        raise InvalidInput(
            f"pipeline field 'export': {emlearn_only[0]} is for scikit-learn trees and MLPs; "
            "Keras models export to microcontrollers as tflm or c-tflm"
        )

    calibration = _mapping(obj.get("calibration", {}), "calibration")
    _keys(calibration, "calibration", ("samples", "seed"))
    cal_samples = int(
        _number(calibration.get("samples", 300), "calibration.samples", 10, 100_000, integer=True)
    )
    cal_seed = int(
        _number(calibration.get("seed", 0), "calibration.seed", 0, 2**31 - 1, integer=True)
    )

    gates_raw = _mapping(obj.get("gates", {}), "gates")
    _keys(gates_raw, "gates", GATES)
    gates = {
        k: float(
            _number(
                v,
                f"gates.{k}",
                0,
                1 if k in ("min_accuracy", "max_accuracy_drop", "min_agreement") else 1e12,
            )
        )
        for k, v in gates_raw.items()
    }
    alias = obj.get("alias")
    if alias is not None:
        check_alias(str(alias))
    description = obj.get("description", "")
    if not isinstance(description, str):
        raise InvalidInput("pipeline field 'description' must be text")
    return PipelineSpec(
        name=name,
        data=_ref(obj["data"], "data"),
        label=label,
        model_kind=kind,
        model_params=dict(params),
        model_seed=seed,
        features=features,
        description=description,
        test_size=test_size,
        split_seed=split_seed,
        stratify=stratify,
        export=tuple(export),
        calibration_samples=cal_samples,
        calibration_seed=cal_seed,
        gates=gates,
        alias=str(alias) if alias is not None else None,
        source=source,
    )


def load_pipeline(path: Path | str) -> PipelineSpec:
    raw, text = load_document(path)
    return parse_pipeline(raw, source=text)
