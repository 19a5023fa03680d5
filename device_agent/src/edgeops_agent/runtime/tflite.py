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

One row in C: with the extension ``edgeops_agent._fastpath`` built, ``predict`` of one
float32 row of a float32, int8 or uint8 model is its ``RowKernel`` (the same numbers
as the Python code: the same quantize and dequantize in float32, the row copied or
quantized into the input tensor, ``Invoke``, the output tensor copied or dequantized
into a new array). It reaches the tensors through the interpreter's ``SetTensor`` and
``GetTensor`` copies, or, when the graph is one whose tensors the runtime never moves
once allocated (:func:`static_graph`: every operator of a kind whose output shapes are
fixed at allocation, their shape and axis inputs constants, one subgraph), through
the tensors' data, whose addresses are read after every allocation and checked again
every 1,024 calls (the kernel goes back to the copies if they ever moved). Anything
else -- batches, other types, a non-finite value for an integer input, a model whose
output row shape is not fixed -- is the Python code, and a runner whose kernel gives
other bytes than the Python code for a row of zeros keeps the Python code.
``EDGEOPS_PURE_PYTHON=1`` turns it off.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from .._native import load_fastpath
from .base import RuntimeMissing, TensorInfo

__all__ = ["TFLiteRunner", "dequantize", "quantize", "static_graph"]

_fastpath = load_fastpath()

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


# Operators whose output shapes follow from their input shapes alone, and those whose
# output shapes also depend on the values of the listed inputs (the graph is static
# when those are constants), by their TFLite BuiltinOperator numbers (schema.fbs; a
# test checks them against the runtime's schema module). Any other operator (control
# flow, custom operators, shapes computed at run time) may give the runtime dynamic
# tensors, which it may reallocate during Invoke: such graphs use the copies.
# fmt: off
_STATIC_OPS = {
    "ADD": 0, "SUB": 41, "MUL": 18, "DIV": 42, "SQUARED_DIFFERENCE": 99, "MAXIMUM": 55,
    "MINIMUM": 57, "AVERAGE_POOL_2D": 1, "MAX_POOL_2D": 17, "L2_POOL_2D": 12, "CONV_2D": 3,
    "DEPTHWISE_CONV_2D": 4, "FULLY_CONNECTED": 9, "SOFTMAX": 25, "LOG_SOFTMAX": 50,
    "LOGISTIC": 14, "TANH": 28, "RELU": 19, "RELU6": 21, "RELU_N1_TO_1": 20,
    "RELU_0_TO_1": 152, "LEAKY_RELU": 98, "HARD_SWISH": 117, "PRELU": 54, "ELU": 111,
    "GELU": 150, "QUANTIZE": 114, "DEQUANTIZE": 6, "CONCATENATION": 2, "SQUEEZE": 43,
    "BATCH_MATMUL": 126, "ABS": 101, "EXP": 47, "LOG": 73, "SQRT": 75, "RSQRT": 76,
    "SQUARE": 92, "NEG": 59, "FLOOR": 8, "CEIL": 104, "ROUND": 116, "L2_NORMALIZATION": 11,
    "LOCAL_RESPONSE_NORMALIZATION": 13, "CAST": 53, "SIN": 66, "COS": 108,
}
_CONST_INPUTS = {  # name: (code, the inputs that must be constants)
    "RESHAPE": (22, (1,)), "EXPAND_DIMS": (70, (1,)), "MEAN": (40, (1,)), "SUM": (74, (1,)),
    "REDUCE_MAX": (82, (1,)), "REDUCE_MIN": (89, (1,)), "REDUCE_PROD": (81, (1,)),
    "PAD": (34, (1,)), "PADV2": (60, (1,)), "TRANSPOSE": (39, (1,)), "ARG_MAX": (56, (1,)),
    "ARG_MIN": (79, (1,)), "SLICE": (65, (1, 2)), "STRIDED_SLICE": (45, (1, 2, 3)),
    "TILE": (69, (1,)),
}
# fmt: on
_STATIC_CODES = frozenset(_STATIC_OPS.values())
_CONST_CODES = {code: inputs for code, inputs in _CONST_INPUTS.values()}


class _Flatbuffer:
    """Just enough of a flatbuffer reader for :func:`static_graph` (no dependency: the
    runtimes' own schema modules are not in every runtime, tflite-runtime has none).
    Any out-of-range offset raises (IndexError or struct.error)."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)

    def _u32(self, at: int) -> int:
        if at < 0:  # unpack_from would count from the end
            raise ValueError("negative offset")
        return int(struct.unpack_from("<I", self.data, at)[0])

    def root(self) -> int:
        return self._u32(0)

    def field(self, table: int, index: int) -> int | None:
        """The position of field ``index`` of the table at ``table``, None when absent."""
        vtable = table - int(struct.unpack_from("<i", self.data, table)[0])
        if table < 0 or vtable < 0:
            raise ValueError("negative offset")
        size = int(struct.unpack_from("<H", self.data, vtable)[0])
        if 4 + 2 * index + 2 > size:
            return None
        offset = int(struct.unpack_from("<H", self.data, vtable + 4 + 2 * index)[0])
        return table + offset if offset else None

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        at = self.field(table, index)
        return default if at is None else int(struct.unpack_from("<" + fmt, self.data, at)[0])
        # (at >= 0: a field's position is its table's plus an unsigned offset)

    def vector(self, table: int, index: int) -> tuple[int, int]:
        """(position of the first element, length) of a vector field; (0, 0) when absent."""
        at = self.field(table, index)
        if at is None:
            return 0, 0
        start = at + self._u32(at)
        return start + 4, self._u32(start)

    def tables(self, table: int, index: int) -> list[int]:
        first, n = self.vector(table, index)
        return [first + 4 * i + self._u32(first + 4 * i) for i in range(n)]

    def ints(self, table: int, index: int) -> list[int]:
        first, n = self.vector(table, index)
        return list(struct.unpack_from(f"<{n}i", self.data, first)) if n else []


def static_graph(model_bytes: bytes) -> bool:
    """Whether the runtime never moves this model's tensors once they are allocated.

    True when the TFLite flatbuffer has one subgraph and every operator is one of
    ``_STATIC_OPS``, or one of ``_CONST_INPUTS`` whose shape and axis inputs are
    constants (tensors with data in the model). False when in doubt, including a
    flatbuffer that does not read as a TFLite model.
    """
    try:
        fb = _Flatbuffer(bytes(model_bytes))
        if bytes(fb.data[4:8]) != b"TFL3":
            return False
        model = fb.root()
        codes = [  # Model.operator_codes: max(deprecated_builtin_code, builtin_code)
            max(fb.scalar(c, 0, "b"), fb.scalar(c, 3, "i")) for c in fb.tables(model, 1)
        ]
        graphs = fb.tables(model, 2)  # Model.subgraphs
        if len(graphs) != 1:
            return False
        buffers = fb.tables(model, 4)  # Model.buffers
        tensors = fb.tables(graphs[0], 0)  # SubGraph.tensors

        def constant(tensor: int) -> bool:
            if tensor < 0:
                return True  # an optional input that is absent
            buffer = buffers[fb.scalar(tensors[tensor], 2, "I")]  # Tensor.buffer
            # Buffer.data, or Buffer.offset for data after the flatbuffer (> 2 GB models)
            return fb.vector(buffer, 0)[1] > 0 or fb.scalar(buffer, 1, "Q") > 1

        for op in fb.tables(graphs[0], 3):  # SubGraph.operators
            code = codes[fb.scalar(op, 0, "I")]  # Operator.opcode_index
            if code in _STATIC_CODES:
                continue
            inputs = fb.ints(op, 1)  # Operator.inputs
            if code not in _CONST_CODES or not all(
                constant(inputs[k]) for k in _CONST_CODES[code] if k < len(inputs)
            ):
                return False
        return True
    except (IndexError, struct.error, ValueError, OverflowError):
        return False


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
        self._kernel: Any = None
        if _fastpath is not None and self._kernel_fits():
            self._static = static_graph(model_bytes)
            self._kernel = _fastpath.RowKernel(
                self._predict, self._interpreter, np.empty, np.dtype(np.float32)
            )
            self._configure_kernel()
            if self._kernel_agrees():
                # the C call itself for one row (it calls _predict for everything else)
                self.predict = self._kernel  # type: ignore[method-assign]
            else:
                self._kernel = None

    @property
    def row_path(self) -> str:
        """How one float32 row runs: ``pointers`` or ``copies`` (in C), or ``python``."""
        mode = "off" if self._kernel is None else str(self._kernel.mode)
        return "python" if mode == "off" else mode

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float32 outputs of the first output tensor for the batch ``x``."""
        return self._predict(x)

    def _kernel_fits(self) -> bool:
        """Float32/int8/uint8 tensors, and an output of rows (a batch dimension and more)
        whose row shape is fixed (declared without -1 or 0 outside the batch dimension):
        one the kernel can size beforehand."""
        types = ("float32", "int8", "uint8")
        out_rows = self._out.shape[1:]
        return (
            self._in.dtype in types
            and self._out.dtype in types
            and (self._in.dtype == "float32" or self._in.scale != 0.0)
            and 1 <= len(self._row_shape) <= 7
            and len(self._out.shape) >= 2
            and tuple(out_rows) == tuple(self._out_row_shape)
            and all(d > 0 for d in out_rows)
        )

    def _kernel_agrees(self) -> bool:
        """One row of zeros through the C path and the Python path: the same bytes (a
        runtime whose interpreter does not behave as the kernel expects keeps Python)."""
        probe = np.zeros((1, *self._row_shape), dtype=np.float32)
        try:
            fast = self._kernel(probe)
            slow = self._predict(probe)
        except Exception:  # any failure means: not with this runtime
            return False
        return bool(fast.dtype == slow.dtype and fast.shape == slow.shape) and (
            fast.tobytes() == slow.tobytes()
        )

    def _configure_kernel(self) -> None:
        """After every allocation: one-row calls in C when the interpreter is allocated
        for one row, else in Python."""
        kernel = self._kernel
        if kernel is None:
            return
        if tuple(self._allocated_shape) != (1, *self._row_shape):
            kernel.deactivate()
            return
        out_integer = self._out.dtype != "float32"
        out_scale = self._out.scale if out_integer and self._out.scale != 0.0 else 1.0
        out_zero = self._out.zero_point if out_integer and self._out.scale != 0.0 else 0
        kernel.configure(
            self._in_index,
            self._out_index,
            self._in.dtype,
            self._in.scale,
            self._in.zero_point,
            self._out.dtype,
            out_scale,
            out_zero,
            tuple(self._row_shape),
            (1, *self._out_row_shape),
            np.zeros((1, *self._row_shape), dtype=self._in.dtype),
            self._tensor_addresses if self._static else None,
        )

    def _tensor_addresses(self) -> tuple[int, int]:
        """The data addresses of the input and output tensors, as allocated now (the views
        are dropped before returning: the interpreter refuses to run while one lives)."""
        view = self._interpreter.tensor(self._in_index)()
        address_in = int(view.__array_interface__["data"][0])
        view = self._interpreter.tensor(self._out_index)()
        address_out = int(view.__array_interface__["data"][0])
        del view
        return address_in, address_out

    def _allocate(self, shape: tuple[int, ...]) -> None:
        """Resize the input to ``shape`` and allocate (the C path is off meanwhile)."""
        if self._kernel is not None:
            self._kernel.deactivate()
        self._interpreter.resize_tensor_input(self._in_index, list(shape), strict=True)
        self._interpreter.allocate_tensors()
        self._allocated_shape = shape
        self._configure_kernel()

    def _predict(self, x: np.ndarray) -> np.ndarray:
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
                self._allocate(shape)
            except (ValueError, RuntimeError):
                self._fall_back_to_rows()
                return self._run_fixed(fed)
        return self._invoke(fed)

    def _fall_back_to_rows(self) -> None:
        """The graph refused a resize: go back to its own batch size, for good."""
        self._resizable = False
        self._allocate((self._fixed_batch, *self._row_shape))

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
