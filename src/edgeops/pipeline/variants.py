"""Export a trained model to a device variant and measure it in the runtime that will run it.

Each format gives bytes to store, a runner to evaluate them (ai-edge-litert or
tflite-runtime for TFLite, onnxruntime for ONNX, the tflite-micro interpreter
for the TFLM C array and for ``tflm``, the int8 flatbuffer itself that TFLite Micro
devices take over the air (as :func:`edgeops.firmware.variants.add_tflm_variant`
makes it), the gcc-compiled program for emlearn C, the firmware's own EOML loader
for ``emlearn-loadable``), and what a device needs: input/output tensors with
quantization parameters, the feature version and its fitted parameters, label
names, the baseline profile of inputs and outputs on the training data, and test
vectors for the device's health check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeops_protocol.baseline import baseline_profile

from ..convert.measure import measure
from ..errors import InvalidInput
from .trainers import Trained

__all__ = ["VARIANT_META_FORMAT", "Exported", "export_variant", "variant_record"]

VARIANT_META_FORMAT = 1
BASELINE_ROWS = 2000
TEST_VECTORS = 8
C_SYMBOL = "edgeops_model"

# format name -> (stored format, runtime family, quantization)
FORMATS: dict[str, tuple[str, str, str]] = {
    "tflite-f32": ("tflite", "tflite", "f32"),
    "tflite-int8": ("tflite", "tflite", "int8"),
    "c-tflm": ("c-tflm", "tflm", "int8"),
    # the tflite-int8 bytes (same SHA-256) for TFLite Micro firmware, arena measured
    "tflm": ("tflite", "tflm", "int8"),
    "onnx-f32": ("onnx", "onnx", "f32"),
    "onnx-int8": ("onnx", "onnx", "int8"),
    "c-emlearn": ("c-emlearn", "emlearn", "f32"),
    # the same trees / MLP as data (EOML) that a firmware loads over the air
    "emlearn-loadable": ("c-emlearn", "emlearn", "f32"),
}


@dataclass
class Exported:
    name: str
    data: bytes
    predict: Callable[[np.ndarray], np.ndarray]
    tensors: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # how it was made
    metrics: dict[str, Any] = field(default_factory=dict)  # measured here, e.g. arena
    close: Callable[[], None] = lambda: None


def _calibration(X_train: np.ndarray, samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = min(samples, len(X_train))
    return np.asarray(X_train[rng.choice(len(X_train), size=n, replace=False)], dtype=np.float32)


def export_variant(
    fmt: str, trained: Trained, X_train: np.ndarray, cal_samples: int, cal_seed: int
) -> Exported:
    """Convert ``trained`` to ``fmt``; the result is ready to measure."""
    from edgeops_agent.runtime import load_runner

    cal = _calibration(X_train, cal_samples, cal_seed)
    if fmt in ("tflite-f32", "tflite-int8", "c-tflm", "tflm"):
        from ..convert.tflite import describe_tflite, keras_to_tflite

        conv = keras_to_tflite(
            trained.model,
            "f32" if fmt == "tflite-f32" else "int8",
            representative=cal,
            max_samples=cal_samples,
            seed=cal_seed,
        )
        info = {"calibration_samples": conv.calibration_samples, "converter": conv.converter}
        if fmt == "tflm":
            from ..firmware.variants import tflm_runner

            arena, tflm = tflm_runner(conv.data, cal[:TEST_VECTORS])
            info.update(runner="tflite-micro", arena_bytes=arena)
            # meta runtime "tflm", as add_tflm_variant records: what deploy sends it to
            tensors = {**describe_tflite(conv.data), "runtime": "tflm"}
            return Exported(
                fmt,
                conv.data,
                tflm.predict,
                tensors,
                info,
                metrics={"arena_bytes": arena, "model_bytes": len(conv.data)},
            )
        if fmt != "c-tflm":
            runner = load_runner("tflite", conv.data)
            return Exported(fmt, conv.data, runner.predict, describe_tflite(conv.data), info)
        from ..convert.tflm import TFLMRunner, smallest_arena, tflite_to_c_array

        arena = smallest_arena(conv.data, cal[:1])
        header, source = tflite_to_c_array(conv.data, C_SYMBOL)
        runner = TFLMRunner(conv.data, arena, checked=True)
        info.update(header=header, tflite_bytes=len(conv.data))
        return Exported(
            fmt,
            source.encode(),
            runner.predict,
            describe_tflite(conv.data),
            info,
            metrics={"arena_bytes": arena, "model_bytes": len(conv.data)},
        )
    if fmt in ("onnx-f32", "onnx-int8"):
        from ..convert.onnx import describe_onnx, keras_to_onnx, quantize_onnx_int8, sklearn_to_onnx

        f32 = (
            keras_to_onnx(trained.model)
            if trained.flavor == "keras"
            else sklearn_to_onnx(trained.model, X_train.shape[1])
        )
        data, info = f32, {}
        if fmt == "onnx-int8":
            data, info = quantize_onnx_int8(f32, cal, max_samples=cal_samples, seed=cal_seed)
            if info.get("method") == "none":
                raise InvalidInput(
                    f"onnx-int8: neither static nor dynamic quantization applies to "
                    f"{trained.kind} ({info.get('dynamic_error', 'no quantizable weights')}); "
                    "drop onnx-int8 from export"
                )
        runner = load_runner("onnx", data)
        return Exported(fmt, data, runner.predict, describe_onnx(data), dict(info))
    if fmt == "c-emlearn":
        from ..convert.emlearn_c import EmlearnCRunner, sklearn_to_emlearn_c

        code = sklearn_to_emlearn_c(trained.model, C_SYMBOL)
        runner = EmlearnCRunner(code, C_SYMBOL, X_train.shape[1])
        exp = Exported(
            fmt, code.encode(), runner.predict, _c_tensors(X_train.shape[1]), {}, close=runner.close
        )
        exp.metrics.update({k: v for k, v in runner.latency_ms(X_train[:200]).items()})
        return exp
    if fmt == "emlearn-loadable":
        from ..firmware.artifact import FORMAT_VERSION, emlearn_loadable, read_header
        from ..firmware.runner import EomlRunner

        data = emlearn_loadable(trained.model)
        eoml = EomlRunner(data)
        info = {
            "artifact": "EOML",
            "artifact_format": FORMAT_VERSION,
            "kind": "trees" if read_header(data).kind == 1 else "mlp",
            "from": "original",
        }
        exp = Exported(
            fmt, data, eoml.predict, _c_tensors(X_train.shape[1]), info, close=eoml.close
        )
        exp.metrics.update(eoml.latency_ms(X_train[:200]))
        return exp
    raise InvalidInput(f"unknown variant format {fmt!r}")


def _c_tensors(n_features: int) -> dict[str, Any]:
    """Tensors of the emlearn variants (``c-emlearn``, ``emlearn-loadable``): float32
    features in, the class index out."""
    return {
        "inputs": [
            {
                "name": "features",
                "shape": [1, n_features],
                "dtype": "float32",
                "scale": 0.0,
                "zero_point": 0,
            }
        ],
        "outputs": [
            {"name": "class", "shape": [1], "dtype": "int32", "scale": 0.0, "zero_point": 0}
        ],
    }


def _one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[labels]


def variant_record(
    exp: Exported,
    *,
    X_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    reference_labels: np.ndarray,
    reference_accuracy: float,
    feature_names: list[str],
    labels: list[str],
    context: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, meta)`` of an exported variant, measured on the held-out split."""
    _stored, runtime, quantization = FORMATS[exp.name]
    metrics = measure(exp.predict, X_test, y_test, reference_labels, reference_accuracy)
    # measured at export: the TFLM arena; emlearn's latency timed inside the C program,
    # which replaces the per-call process start that measure() would otherwise report
    metrics.update(exp.metrics)
    if metrics["non_finite"]:
        raise InvalidInput(
            f"{exp.name}: {int(metrics['non_finite'])} non-finite outputs on the test split; "
            "the conversion is broken, drop this format or retrain"
        )
    base_rows = X_train[:BASELINE_ROWS]
    outputs = np.asarray(exp.predict(base_rows))
    if outputs.ndim == 1:  # class indices only (emlearn): confidence is not known
        outputs = _one_hot(outputs.astype(np.int64), len(labels))
    vectors_in = np.asarray(X_test[:TEST_VECTORS], dtype=np.float32)
    vectors_out = np.asarray(exp.predict(vectors_in), dtype=np.float32)
    meta = {
        "format_version": VARIANT_META_FORMAT,
        "variant": exp.name,
        "runtime": runtime,
        "quantization": quantization,
        **exp.tensors,
        "labels": list(labels),
        "feature_names": list(feature_names),
        "baseline": baseline_profile(base_rows, outputs, feature_names, labels),
        "test_vectors": {"inputs": vectors_in.tolist(), "outputs": vectors_out.tolist()},
        "conversion": {k: v for k, v in exp.info.items() if k != "header"},
        **context,
    }
    if "header" in exp.info:
        meta["c_header"] = exp.info["header"]
    return metrics, meta
