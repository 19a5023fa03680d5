"""TFLite models on the device: ai-edge-litert first, then tflite-runtime.

:class:`TFLiteRunner` takes and returns float32 batches. For an integer
(int8/uint8/int16) input tensor it quantizes with the tensor's own parameters,
``q = clip(round(x / scale) + zero_point)``, and it dequantizes integer outputs
with ``(q - zero_point) * scale``. :func:`quantize` and :func:`dequantize` are
that convention, shared with the TFLite Micro runner on the server side.

Batches: when the model's batch dimension is dynamic (``-1`` in the input's
``shape_signature``, which is what the TFLite converter writes for Keras models)
the input tensor is resized to the batch size with ``strict=True`` and tensors are
re-allocated only when the batch size changes, so repeated single-row calls cost
one ``set_tensor``/``invoke``/``get_tensor`` each. A model with a fixed batch
dimension, or one whose graph refuses the resize, is run row by row at its own
batch size; that path is slower for big batches but always correct, and it is
chosen once, at the first failure, not retried on every call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import RuntimeMissing, TensorInfo

__all__ = ["TFLiteRunner", "dequantize", "quantize"]

_MAX_ROWS_PER_INVOKE = 1024  # bounds the memory a single huge batch can allocate


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype | str) -> np.ndarray:
    """Float values to integer ``dtype``: ``clip(round(x / scale) + zero_point)``.

    >>> quantize(np.array([0.0, 0.5, 20.0]), 0.0625, -128, "int8").tolist()
    [-128, -120, 127]
    """
    info = np.iinfo(np.dtype(dtype))
    q = np.round(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer values back to float32: ``(q - zero_point) * scale``.

    >>> dequantize(np.array([-128, -120], dtype=np.int8), 0.0625, -128).tolist()
    [0.0, 0.5]
    """
    return ((np.asarray(q, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(
        np.float32
    )


def _load_interpreter_class() -> tuple[Any, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        pass
    raise RuntimeMissing(
        "no TFLite runtime is installed; install ai-edge-litert (or tflite-runtime on numpy<2)"
    )


def _tensor_info(detail: dict) -> TensorInfo:
    """TensorInfo from an interpreter tensor detail; ``-1`` marks a dynamic dimension."""
    shape = detail.get("shape_signature")
    if shape is None or len(shape) == 0:
        shape = detail["shape"]
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorInfo(
        name=str(detail["name"]),
        shape=tuple(int(d) for d in shape),
        dtype=np.dtype(detail["dtype"]).name,
        scale=float(scale),
        zero_point=int(zero_point),
        extra={"index": int(detail["index"])},
    )


def _is_integer(dtype: str) -> bool:
    return np.issubdtype(np.dtype(dtype), np.integer)


class TFLiteRunner:
    """A TFLite flatbuffer loaded in the first installed TFLite runtime.

    ``inputs``/``outputs`` describe the model's tensors (``shape`` is the
    signature, with ``-1`` for a dynamic batch dimension). ``predict`` feeds the
    first input tensor and returns the first output tensor as float32.
    """

    def __init__(self, model_bytes: bytes, num_threads: int = 1) -> None:
        interpreter_class, self.runtime = _load_interpreter_class()
        try:
            self._interpreter = interpreter_class(
                model_content=bytes(model_bytes), num_threads=num_threads
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"cannot load the TFLite model: {exc}") from exc
        self.inputs = [_tensor_info(d) for d in self._interpreter.get_input_details()]
        self.outputs = [_tensor_info(d) for d in self._interpreter.get_output_details()]
        if len(self.inputs) != 1:
            raise ValueError(f"TFLite model has {len(self.inputs)} inputs; the runner feeds one")
        detail = self._interpreter.get_input_details()[0]
        self._in = self.inputs[0]
        self._out = self.outputs[0]
        self._in_index = int(detail["index"])
        self._out_index = int(self._out.extra["index"])
        out_detail = self._interpreter.get_output_details()[0]
        self._out_row_shape = tuple(int(d) for d in out_detail["shape"])[1:]
        self._allocated_shape = tuple(int(d) for d in detail["shape"])
        self._row_shape = self._allocated_shape[1:]
        self._fixed_batch = self._allocated_shape[0]
        self._resizable = bool(self._in.shape) and self._in.shape[0] == -1

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float32 outputs of the first output tensor for the batch ``x``."""
        batch = np.asarray(x, dtype=np.float32)
        if batch.shape[1:] != self._row_shape:
            raise ValueError(
                f"input rows have shape {batch.shape[1:]}, the model expects {self._row_shape}"
            )
        if len(batch) == 0:
            return np.zeros((0, *self._out_row_shape), dtype=np.float32)
        if _is_integer(self._in.dtype):
            fed = quantize(batch, self._in.scale, self._in.zero_point, self._in.dtype)
        else:
            fed = batch.astype(self._in.dtype, copy=False)
        if self._resizable:
            parts = [
                self._run_resized(fed[i : i + _MAX_ROWS_PER_INVOKE])
                for i in range(0, len(fed), _MAX_ROWS_PER_INVOKE)
            ]
        else:
            parts = [self._run_fixed(fed)]
        raw = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if _is_integer(self._out.dtype) and self._out.scale != 0.0:
            return dequantize(raw, self._out.scale, self._out.zero_point)
        return raw.astype(np.float32, copy=False)

    def _invoke(self, fed: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._in_index, fed)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._out_index)

    def _run_resized(self, fed: np.ndarray) -> np.ndarray:
        shape = fed.shape
        if shape != self._allocated_shape:
            try:
                self._interpreter.resize_tensor_input(self._in_index, list(shape), strict=True)
                self._interpreter.allocate_tensors()
                self._allocated_shape = shape
            except (ValueError, RuntimeError):
                self._fall_back_to_rows()
                return self._run_fixed(fed)
        return self._invoke(fed)

    def _fall_back_to_rows(self) -> None:
        """The graph refused a resize: go back to its own batch size, for good."""
        self._resizable = False
        original = (self._fixed_batch, *self._row_shape)
        self._interpreter.resize_tensor_input(self._in_index, list(original), strict=True)
        self._interpreter.allocate_tensors()
        self._allocated_shape = original

    def _run_fixed(self, fed: np.ndarray) -> np.ndarray:
        """Run in chunks of the model's own batch size, padding the last chunk."""
        size = max(self._fixed_batch, 1)
        outs = []
        for start in range(0, len(fed), size):
            chunk = fed[start : start + size]
            rows = len(chunk)
            if rows < size:
                pad = np.zeros((size - rows, *self._row_shape), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            outs.append(self._invoke(chunk)[:rows])
        return np.concatenate(outs) if len(outs) > 1 else outs[0]
