"""Keras models to TFLite flatbuffers: float32, or full-integer int8.

``keras_to_tflite`` returns a :class:`TFLiteConversion`: the flatbuffer bytes
(``.data``, also ``bytes(conversion)``) and the number of calibration samples
the int8 quantizer saw (0 for float32).

int8 is full-integer post-training quantization: weights and activations int8,
int8 input and output tensors, built-in int8 kernels only (so the model runs on
TFLite Micro too). Calibration rows are drawn without replacement, seeded, from
the training data passed as ``representative``.

Keras 3 under TensorFlow 2.16+: ``TFLiteConverter.from_keras_model`` works; it
exports the model to a temporary SavedModel internally (and prints about it, which
is silenced here). Should it fail, the model is exported with
``model.export(dir, format="tf_saved_model")`` and converted with
``from_saved_model``. ``from_concrete_functions`` is not used: with Keras 3 it
drops the weights (they stay uninitialised variables) and the model computes NaN.
Every conversion is run on a few rows afterwards, so such a result is refused.

``describe_tflite`` reads tensor details through the device runner, so it needs
ai-edge-litert but not TensorFlow.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgeops.errors import InvalidInput, MissingExtra

__all__ = ["TFLiteConversion", "calibration_rows", "describe_tflite", "keras_to_tflite"]

Quantization = Literal["f32", "int8"]
_SMOKE_ROWS = 8  # rows run through the converted model to catch non-finite outputs


@dataclass(frozen=True)
class TFLiteConversion:
    """A converted model: flatbuffer ``data``, how it was calibrated, which path made it."""

    data: bytes
    quantization: Quantization
    calibration_samples: int  # rows the int8 quantizer saw; 0 for f32
    converter: str = "from_keras_model"  # or "saved_model" (the fallback)

    def __bytes__(self) -> bytes:
        return self.data

    def __len__(self) -> int:
        return len(self.data)


def _import_tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise MissingExtra("tensorflow", "tensorflow") from exc
    return tf


def calibration_rows(
    representative: np.ndarray, max_samples: int = 300, seed: int = 0
) -> np.ndarray:
    """The float32 rows the int8 quantizer calibrates on: up to ``max_samples``, seeded.

    >>> calibration_rows(np.arange(10.0).reshape(5, 2), max_samples=2, seed=0).shape
    (2, 2)
    """
    data = np.asarray(representative, dtype=np.float32)
    if data.ndim < 2 or len(data) == 0:
        raise InvalidInput(
            f"int8 calibration needs representative rows with a batch axis; got shape {data.shape}"
        )
    if max_samples < 1:
        raise InvalidInput(f"int8 calibration needs max_samples >= 1, got {max_samples}")
    if not np.all(np.isfinite(data)):
        raise InvalidInput("int8 calibration: representative data contains NaN or inf")
    rng = np.random.default_rng(seed)
    count = min(max_samples, len(data))
    idx = np.sort(rng.choice(len(data), size=count, replace=False))
    return data[idx]


def _weight_name(weight: Any) -> str:
    return str(getattr(weight, "path", None) or getattr(weight, "name", "?"))


def _check_weights(model: Any) -> None:
    for weight in model.weights:
        values = np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight)
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise InvalidInput(
                f"TFLite conversion, input check: weight {_weight_name(weight)!r} contains NaN "
                "or inf; "
                "retrain the model"
            )


def _row_shape(model: Any) -> tuple[int, ...]:
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    if not shape or any(d is None for d in shape[1:]):
        raise InvalidInput(
            "TFLite conversion, input check: the model needs a fixed input shape apart from "
            f"the batch axis; got {shape or 'an unbuilt model'}"
        )
    return tuple(int(d) for d in shape[1:])


@contextlib.contextmanager
def _from_keras_model(tf: Any, model: Any) -> Iterator[Any]:
    yield tf.lite.TFLiteConverter.from_keras_model(model)


@contextlib.contextmanager
def _from_saved_model(tf: Any, model: Any) -> Iterator[Any]:
    with tempfile.TemporaryDirectory(prefix="edgeops-tflite-") as export_dir:
        model.export(export_dir, format="tf_saved_model")
        yield tf.lite.TFLiteConverter.from_saved_model(export_dir)


# Tried in order. Not ``from_concrete_functions``: with Keras 3 models it leaves the
# weights as uninitialised resource variables and the result computes NaN.
_CONVERTERS: tuple[tuple[str, Callable[[Any, Any], AbstractContextManager[Any]]], ...] = (
    ("from_keras_model", _from_keras_model),
    ("saved_model", _from_saved_model),
)


def _configure_int8(tf: Any, converter: Any, rows: np.ndarray) -> None:
    def representative_dataset() -> Iterator[list[np.ndarray]]:
        for i in range(len(rows)):
            yield [rows[i : i + 1]]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8


def _convert(
    tf: Any, model: Any, quantization: Quantization, rows: np.ndarray | None
) -> tuple[bytes, str]:
    errors = []
    for name, make in _CONVERTERS:
        try:
            with (
                contextlib.redirect_stdout(io.StringIO()),
                warnings.catch_warnings(),
                make(tf, model) as converter,
            ):
                warnings.simplefilter("ignore")
                if rows is not None and quantization == "int8":
                    _configure_int8(tf, converter, rows)
                return bytes(converter.convert()), name
        except Exception as exc:  # the converter raises many unrelated types
            last_line = (str(exc).strip().splitlines() or [""])[-1][:300]
            errors.append(f"{name}: {type(exc).__name__}: {last_line}")
    raise InvalidInput(
        f"TFLite {quantization} conversion failed at step 'convert': " + "; ".join(errors)
    )


def _smoke_check(data: bytes, quantization: Quantization, rows: np.ndarray) -> None:
    """Run a few rows through the converted model; non-finite outputs are an error."""
    from edgeops_agent.runtime import RuntimeMissing
    from edgeops_agent.runtime.tflite import TFLiteRunner

    try:
        outputs = TFLiteRunner(data).predict(rows[:_SMOKE_ROWS])
    except RuntimeMissing as exc:
        raise MissingExtra("ai-edge-litert", "tensorflow") from exc
    if not np.all(np.isfinite(outputs)):
        raise InvalidInput(
            f"TFLite {quantization} conversion, step 'check outputs': the converted model "
            "gives NaN or inf; check the model and the calibration data"
        )


def keras_to_tflite(
    model: Any,
    quantization: Quantization,
    representative: np.ndarray | None = None,
    max_samples: int = 300,
    seed: int = 0,
) -> TFLiteConversion:
    """Convert a built Keras model to a TFLite flatbuffer.

    ``quantization`` is ``"f32"`` (no quantization) or ``"int8"`` (full integer,
    int8 input/output; needs ``representative`` rows, usually the training data,
    of which up to ``max_samples`` seeded by ``seed`` calibrate the ranges).
    Raises :class:`InvalidInput` naming the step that failed.
    """
    if quantization not in ("f32", "int8"):
        raise InvalidInput(f"quantization must be 'f32' or 'int8', got {quantization!r}")
    rows = None
    if representative is not None or quantization == "int8":
        if representative is None:
            raise InvalidInput("int8 quantization needs representative data (the training rows)")
        rows = calibration_rows(representative, max_samples=max_samples, seed=seed)
    tf = _import_tf()
    row_shape = _row_shape(model)
    if rows is not None and rows.shape[1:] != row_shape:
        raise InvalidInput(
            f"representative rows have shape {rows.shape[1:]}, the model expects {row_shape}"
        )
    _check_weights(model)
    data, converter = _convert(tf, model, quantization, rows)
    smoke = rows if rows is not None else np.zeros((1, *row_shape), dtype=np.float32)
    _smoke_check(data, quantization, smoke)
    used = len(rows) if quantization == "int8" and rows is not None else 0
    return TFLiteConversion(
        data=data, quantization=quantization, calibration_samples=used, converter=converter
    )


def describe_tflite(model_bytes: bytes) -> dict[str, Any]:
    """Inputs and outputs of a TFLite model: name, shape (``-1`` = dynamic), dtype,
    scale and zero point. Needs a TFLite runtime, not TensorFlow."""
    from edgeops_agent.runtime import RuntimeMissing
    from edgeops_agent.runtime.tflite import TFLiteRunner

    try:
        runner = TFLiteRunner(bytes(model_bytes))
    except RuntimeMissing as exc:
        raise MissingExtra("ai-edge-litert", "tensorflow") from exc
    except ValueError as exc:
        raise InvalidInput(f"not a usable TFLite model: {exc}") from exc
    return {
        "runtime": runner.runtime,
        "inputs": [t.to_dict() for t in runner.inputs],
        "outputs": [t.to_dict() for t in runner.outputs],
    }
