"""ONNX variants of trained models: float32 conversion and int8 quantization.

- :func:`sklearn_to_onnx` converts a scikit-learn estimator with skl2onnx.
  Classifiers are converted without ZipMap, so the graph has a ``label`` output
  and a ``probabilities`` output of shape ``(n, classes)``.
- :func:`keras_to_onnx` converts a Keras 3 model. tf2onnx's ``from_keras`` does
  not work on Keras 3 models (it fails looking up ``keras_tensor_*`` names), so
  the model is exported as a TensorFlow SavedModel (``model.export``) into a
  temporary directory and that SavedModel's ``serving_default`` signature is
  converted, which is what ``python -m tf2onnx.convert --saved-model`` does.
- :func:`quantize_onnx_int8` runs onnxruntime's static QDQ quantization
  (int8 weights and activations, calibrated on seeded samples) and falls back to
  dynamic quantization where static quantization fails or quantizes nothing.
- :func:`describe_onnx` lists inputs and outputs as the device runner sees them.

Graphs target opset :data:`ONNX_OPSET` (and at most :data:`ONNX_ML_OPSET` for
``ai.onnx.ml``) with IR version 8, which onnxruntime runs since 1.12: the model
is built for the onnxruntime on the device, often older than the one here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeops.errors import InvalidInput, MissingExtra

__all__ = [
    "ONNX_ML_OPSET",
    "ONNX_OPSET",
    "describe_onnx",
    "keras_to_onnx",
    "quantize_onnx_int8",
    "sklearn_to_onnx",
]

ONNX_OPSET = 17
ONNX_ML_OPSET = 3
INPUT_NAME = "input"
OUTPUT_NAME = "output"  # Keras models; skl2onnx names its own outputs


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _runner(model_bytes: bytes) -> Any:
    from edgeops_agent.runtime.base import RuntimeMissing
    from edgeops_agent.runtime.onnx import OnnxRunner

    try:
        return OnnxRunner(model_bytes)
    except RuntimeMissing as exc:
        raise MissingExtra("onnxruntime", "onnx") from exc
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


def _compact(model_bytes: bytes) -> bytes:
    """The same model with short internal names and only the opset imports it uses.

    Converters name tensors after their source graph
    (``StatefulPartitionedCall/sequential_1/dense_1/BiasAdd/ReadVariableOp:0``)
    and the quantizer appends ``_quantized``/``_scale``/``_zero_point``; on a small
    MLP those names take half the file. Internal tensors become ``t0, t1, ...``
    and nodes ``n0, n1, ...``; graph inputs and outputs keep their names.
    Shape annotations (``value_info``) and doc strings are dropped, duplicate
    opset imports merged, and domains no node uses (the quantizer adds
    ``com.microsoft`` and others) removed, so an older onnxruntime on the device
    has less to object to. The graph is named ``edgeops`` (skl2onnx picks a random
    UUID), so converting the same model twice gives the same bytes and the same
    SHA-256 in the artifact store. Graphs with subgraphs (If/Loop) are left as
    they are.
    """
    import onnx

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        return model_bytes
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {"": ""}

    def short(name: str) -> str:
        if name in keep:
            return name
        return names.setdefault(name, f"t{len(names) - 1}")

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
        tensor.doc_string = ""
    for i, node in enumerate(graph.node):
        node.name, node.doc_string = f"n{i}", ""
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
    del graph.value_info[:]
    graph.doc_string = model.doc_string = ""
    graph.name = "edgeops"  # skl2onnx names graphs with a random UUID
    used = {n.domain for n in graph.node} | {""}
    versions: dict[str, int] = {}
    for opset in model.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        if domain in used:
            versions[domain] = max(versions.get(domain, 0), opset.version)
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in versions.items())
    return model.SerializeToString()


def sklearn_to_onnx(estimator: Any, n_features: int) -> bytes:
    """ONNX bytes of a fitted scikit-learn estimator with a float32 input named ``input``.

    The input has shape ``(None, n_features)``. Classifiers get no ZipMap, so
    their ``probabilities`` output is a plain float32 tensor.
    """
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError as exc:
        raise MissingExtra("skl2onnx", "onnx") from exc
    from sklearn.base import is_classifier

    if int(n_features) < 1:
        raise InvalidInput(f"n_features must be at least 1, got {n_features}")
    fitted = getattr(estimator, "n_features_in_", None)
    if fitted is not None and int(fitted) != int(n_features):
        raise InvalidInput(f"the estimator was fitted on {fitted} features, not {n_features}")
    options: dict[int, dict[str, Any]] = {}
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    for part in {id(estimator): estimator, id(final): final}.values():
        if is_classifier(part):
            options[id(part)] = {"zipmap": False}
    try:
        proto = convert_sklearn(
            estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, int(n_features)]))],
            target_opset={"": ONNX_OPSET, "ai.onnx.ml": ONNX_ML_OPSET},
            options=options,
        )
    except Exception as exc:  # skl2onnx raises many types for unsupported models
        name = type(estimator).__name__
        raise InvalidInput(f"skl2onnx cannot convert {name}: {_first_line(exc)}") from exc
    return _compact(proto.SerializeToString())


def keras_to_onnx(model: Any) -> bytes:
    """ONNX bytes of a Keras 3 model with one input (``input``) and one output (``output``).

    The model goes through a SavedModel in a temporary directory that is
    removed afterwards; see the module docstring for why.
    """
    try:
        import tensorflow  # noqa: F401  (tf2onnx needs it; name the right extra if missing)
    except ImportError as exc:
        raise MissingExtra("tensorflow", "tensorflow") from exc
    try:
        import tf2onnx
        from tf2onnx import tf_loader
    except ImportError as exc:
        raise MissingExtra("tf2onnx", "onnx") from exc

    with tempfile.TemporaryDirectory(prefix="edgeops-keras-onnx-") as tmp:
        saved = str(Path(tmp) / "saved_model")
        try:
            model.export(saved, format="tf_saved_model", verbose=False)
        except Exception as exc:  # Keras raises ValueError/TypeError for unbuilt models
            raise InvalidInput(f"cannot export the Keras model: {_first_line(exc)}") from exc
        graph_def, inputs, outputs = tf_loader.from_saved_model(
            saved, None, None, tag="serve", signatures=["serving_default"]
        )
        if len(inputs) != 1 or len(outputs) != 1:
            raise InvalidInput(
                f"the Keras model has {len(inputs)} inputs and {len(outputs)} outputs; "
                "edgeops converts models with one of each"
            )
        proto, _ = tf2onnx.convert.from_graph_def(
            graph_def,
            input_names=inputs,
            output_names=outputs,
            opset=ONNX_OPSET,
            tensors_to_rename={inputs[0]: INPUT_NAME, outputs[0]: OUTPUT_NAME},
        )
    return _compact(proto.SerializeToString())


class _SampleReader:
    """Feeds calibration rows to onnxruntime one at a time (any batch dim works)."""

    def __init__(self, input_name: str, rows: np.ndarray) -> None:
        self._input_name = input_name
        self._rows = rows
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._rows):
            return None
        row = self._rows[self._next : self._next + 1]
        self._next += 1
        return {self._input_name: row}

    def rewind(self) -> None:
        self._next = 0


def _calibration_rows(calibration: np.ndarray, max_samples: int, seed: int) -> np.ndarray:
    """Up to ``max_samples`` rows of ``calibration``, drawn without replacement with ``seed``."""
    data = np.asarray(calibration, dtype=np.float32)
    if data.ndim < 2 or len(data) == 0:
        raise InvalidInput(f"calibration data must be a non-empty batch, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise InvalidInput("calibration data contains NaN or infinite values")
    n = min(int(max_samples), len(data))
    if n < 1:
        raise InvalidInput(f"max_samples must be at least 1, got {max_samples}")
    index = np.random.default_rng(seed).choice(len(data), size=n, replace=False)
    return np.ascontiguousarray(data[index])


def _int8_weights(model_bytes: bytes) -> int:
    """How many weight tensors (initializers) of the model are stored as int8."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    return sum(1 for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8)


def _pre_process(quant_pre_process: Any, source: Path, prepared: Path) -> str:
    """Run ``quant_pre_process``; without symbolic shape inference if that fails.

    onnxruntime's symbolic shape inference does not know the ``ai.onnx.ml``
    operators skl2onnx writes for linear models and tree ensembles ("Incomplete
    symbolic shape inference"); ONNX's own shape inference does. Returns
    ``"full"`` or ``"no-symbolic-shape"``.
    """
    try:
        quant_pre_process(str(source), str(prepared))
        return "full"
    except Exception:  # onnxruntime raises a bare Exception here
        pass
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:
        raise InvalidInput(f"quant_pre_process failed: {_first_line(exc)}") from exc
    return "no-symbolic-shape"


def _attempt(quantize: Any, target: Path) -> tuple[bytes | None, str]:
    """Run one quantizer writing ``target``: its bytes if any weight became int8, else why not."""
    try:
        quantize(str(target))
    except Exception as exc:  # the quantizers raise bare Exception/ValueError/KeyError alike
        return None, _first_line(exc)
    result = _compact(target.read_bytes())
    if _int8_weights(result) == 0:
        return None, "no operator in the graph was quantized"
    return result, ""


def quantize_onnx_int8(
    model_bytes: bytes, calibration: np.ndarray, max_samples: int = 300, seed: int = 0
) -> tuple[bytes, dict[str, Any]]:
    """An int8 ONNX model from a float32 one, and how it was made.

    Steps: ``quant_pre_process`` (shape inference and graph optimization), then
    static QDQ quantization with int8 activations and weights, calibrated
    (MinMax) on up to ``max_samples`` rows of ``calibration`` drawn with
    ``seed``. If static quantization raises or quantizes no weight (tree
    ensembles and the ``ai.onnx.ml`` linear classifier have no quantized
    kernels), dynamic quantization is tried. If that fails too, the float model
    is returned unchanged with ``method == "none"``: callers must check it.

    ``info`` holds ``method`` (``"static-qdq"``, ``"dynamic"`` or ``"none"``),
    ``calibration_samples``, ``pre_process``, ``int8_weights``, ``size_f32``,
    ``size_int8``, ``size_ratio``, and why a step was skipped
    (``static_error``, ``dynamic_error``).

    Raises :class:`InvalidInput` if the float model, or the quantized one,
    gives NaN or infinite outputs on the calibration rows.
    """
    try:
        from onnxruntime.quantization import (
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise MissingExtra("onnxruntime", "onnx") from exc

    rows = _calibration_rows(calibration, max_samples, seed)
    source_runner = _runner(model_bytes)
    input_name = source_runner.inputs[0].name
    if not np.all(np.isfinite(source_runner.predict(rows))):
        raise InvalidInput(
            "the float model already gives NaN or infinite outputs on the calibration data"
        )
    info: dict[str, Any] = {"calibration_samples": len(rows), "size_f32": len(model_bytes)}
    with tempfile.TemporaryDirectory(prefix="edgeops-onnx-int8-") as tmp:
        source, prepared = Path(tmp) / "f32.onnx", str(Path(tmp) / "pre.onnx")
        source.write_bytes(model_bytes)
        info["pre_process"] = _pre_process(quant_pre_process, source, Path(prepared))

        def static(target: str) -> None:
            reader = _SampleReader(input_name, rows)
            quantize_static(
                prepared,
                target,
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
            )

        def dynamic(target: str) -> None:
            quantize_dynamic(prepared, target, weight_type=QuantType.QInt8)

        method = "static-qdq"
        quantized, info["static_error"] = _attempt(static, Path(tmp) / "static.onnx")
        if quantized is None:
            method = "dynamic"
            quantized, info["dynamic_error"] = _attempt(dynamic, Path(tmp) / "dynamic.onnx")
        if quantized is None:
            method, quantized = "none", model_bytes
    info = {k: v for k, v in info.items() if v != ""}

    outputs = _runner(quantized).predict(rows)
    if not np.all(np.isfinite(outputs)):
        raise InvalidInput(
            f"int8 quantization ({method}) gives NaN or infinite outputs on the calibration data"
        )
    info.update(method=method, int8_weights=_int8_weights(quantized), size_int8=len(quantized))
    info["size_ratio"] = len(quantized) / len(model_bytes)
    return quantized, info


def describe_onnx(model_bytes: bytes) -> dict[str, Any]:
    """Inputs and outputs (name, shape with -1 for dynamic dims, dtype) of an ONNX model.

    ``output`` names the output the device runner's ``predict`` returns.
    """
    runner = _runner(model_bytes)
    return {
        "runtime": runner.runtime,
        "inputs": [t.to_dict() for t in runner.inputs],
        "outputs": [t.to_dict() for t in runner.outputs],
        "output": runner.output.name,
    }
