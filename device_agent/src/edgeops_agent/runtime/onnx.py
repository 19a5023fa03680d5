"""ONNX models on the device, run by onnxruntime on the CPU.

:class:`OnnxRunner` takes float32 batches and returns float32 batches.
Quantized (QDQ) ONNX models keep float inputs and outputs, so no scaling is
done here: the graph's own QuantizeLinear/DequantizeLinear nodes do it.

Which output ``predict`` returns: the model's *first floating-point output of
rank 2* (class scores or probabilities, shape ``(n, classes)``) when there is
one, else the model's first output. A scikit-learn classifier converted by
skl2onnx without ZipMap has two outputs, ``label`` (int64, ``(n,)``) and
``probabilities`` (float32, ``(n, classes)``); the rule picks
``probabilities``. A Keras model converted by tf2onnx has one output, which is
the one returned.

Single-row calls are the common case on a device, so everything that can be
decided once (input name, fetched output, input dtype) is decided in the
constructor, and ``predict`` is one ``session.run``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import RuntimeMissing, TensorInfo

__all__ = ["OnnxRunner", "select_output"]

# onnxruntime type strings ("tensor(float)") to numpy dtype names
_ONNX_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeMissing(
            "onnxruntime is not installed; install it with: pip install 'edgeops-agent[onnx]'"
        ) from exc
    return onnxruntime


def _tensor_info(arg: Any) -> TensorInfo:
    """TensorInfo from an onnxruntime NodeArg; ``-1`` marks a dynamic (named or unknown) dim."""
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorInfo(
        name=str(arg.name),
        shape=shape,
        dtype=_ONNX_TO_NUMPY.get(str(arg.type), str(arg.type)),
        extra={"onnx_type": str(arg.type)},
    )


def select_output(outputs: list[TensorInfo]) -> int:
    """Index of the output ``predict`` returns: the first float output of rank 2, else 0.

    >>> label = TensorInfo("label", (-1,), "int64")
    >>> probabilities = TensorInfo("probabilities", (-1, 10), "float32")
    >>> select_output([label, probabilities])
    1
    """
    for i, out in enumerate(outputs):
        if len(out.shape) == 2 and out.dtype in ("float32", "float64", "float16"):
            return i
    return 0


class OnnxRunner:
    """An ONNX model loaded in an onnxruntime CPU session.

    ``num_threads`` sets the intra-op thread pool (one thread is the right
    default on a small board that also runs the agent); graph optimizations are
    all on. ``inputs``/``outputs`` describe the model's tensors, and
    ``output`` is the one ``predict`` returns (see the module docstring).
    """

    runtime = "onnxruntime"

    def __init__(self, model_bytes: bytes, num_threads: int = 1) -> None:
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(num_threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                bytes(model_bytes), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"cannot load the ONNX model: {message}") from exc
        self.inputs = [_tensor_info(a) for a in self._session.get_inputs()]
        self.outputs = [_tensor_info(a) for a in self._session.get_outputs()]
        if len(self.inputs) != 1:
            raise ValueError(f"ONNX model has {len(self.inputs)} inputs; the runner feeds one")
        self._in = self.inputs[0]
        self.output = self.outputs[select_output(self.outputs)]
        self._fetch = [self.output.name]
        self._in_dtype = np.dtype(self._in.dtype)
        self._row_shape = self._in.shape[1:]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float32 values of the selected output for the batch ``x`` (first axis = batch)."""
        batch = np.asarray(x, dtype=np.float32)
        rows = batch.shape[1:]
        want = self._row_shape
        if len(rows) != len(want) or any(want[i] not in (-1, rows[i]) for i in range(len(rows))):
            raise ValueError(
                f"input rows have shape {rows}, the model expects {self._row_shape} (-1: any)"
            )
        if len(batch) == 0:
            return np.zeros((0, *(max(d, 0) for d in self.output.shape[1:])), dtype=np.float32)
        fed = batch if self._in_dtype == np.float32 else batch.astype(self._in_dtype)
        (out,) = self._session.run(self._fetch, {self._in.name: fed})
        return np.asarray(out, dtype=np.float32)
