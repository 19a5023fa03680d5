"""The host firmware's TFLite Micro: the tflite-micro interpreter behind a socket.

A board links TFLite Micro into the firmware (``templates/runners/tflm``). This
machine has no TFLite Micro C/C++ library, only the ``tflite-micro`` Python
package (pybind bindings over TFLM's C++ interpreter and kernels), so the host
port's runner (``templates/ports/host/host_tflm.c``) runs the interpreter out of
process: it starts ``$EDGEOPS_TFLM_PYTHON -m edgeops.firmware.tflm_worker``
(default ``python3``) at the first TFLite load and keeps it for the firmware's
life. The firmware does what the board runner does around TFLM — checks the
flatbuffer, quantizes float features for an int8 input tensor, dequantizes int8
scores, takes the argmax (``core/edgeops_model.c``) — and the worker only holds
interpreters, copies tensor bytes in, invokes, and copies tensor bytes out.

Standard input and output are one end of a socket pair (writing to a worker that
died is then an error for the firmware, not a SIGPIPE). Frames, in both directions
an 8-byte header and a payload (integers little-endian; tensor bytes in the
machine's order, both ends run on one host):

- request: ``u8 op, u8 handle, u16 0, u32 length``, then ``length`` bytes;
- reply: ``u8 status (0 ok, 1 error), u8 0, u16 0, u32 length``, then the payload
  (on an error, a one-line UTF-8 reason).

On start the worker sends one reply: status 0 with :data:`HELLO`, or status 1 with
why it cannot run (tflite-micro not installed). Ops, on interpreter ``handle``:

- ``L`` load: ``u32 arena_bytes`` and the flatbuffer. Reply: ``u32 n_inputs,
  u32 n_outputs, u8 input_type, u8 output_type, u16 0, f32 input_scale,
  i32 input_zero_point, f32 output_scale, i32 output_zero_point`` (types in
  TfLiteType numbering: 1 float32, 9 int8; scale 0 for a float tensor);
- ``P`` predict: the input tensor's bytes. Reply: the output tensor's bytes;
- ``U`` unload: nothing. Reply: nothing.

The worker ends when its standard input closes (the firmware exited). TFLM's own
prints go to standard error (the firmware's log), never into the replies.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO

__all__ = ["HELLO", "main"]

HELLO = b"edgeops-tflm-worker 1"
FRAME = struct.Struct("<BBHI")
LOADED = struct.Struct("<IIBBxxfifi")
OP_LOAD, OP_PREDICT, OP_UNLOAD = ord("L"), ord("P"), ord("U")
TYPE_FLOAT32, TYPE_INT8 = 1, 9
MAX_FRAME = 64 << 20
MAX_REASON = 900


class WorkerError(Exception):
    """A request the worker refuses; the reason goes back to the firmware."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


@dataclass
class _Loaded:
    model: bytes  # kept alive while the interpreter reads it
    interpreter: Any
    in_shape: tuple[int, ...]
    in_dtype: Any
    n_in: int
    out_dtype: Any


class _Interpreters:
    def __init__(self, runtime: Any, np: Any) -> None:
        self.runtime = runtime
        self.np = np
        self.loaded: dict[int, _Loaded] = {}

    def _type(self, dtype: Any, what: str) -> int:
        np = self.np
        if np.dtype(dtype) == np.int8:
            return TYPE_INT8
        if np.dtype(dtype) == np.float32:
            return TYPE_FLOAT32
        raise WorkerError(f"the model's {what} tensor is {np.dtype(dtype)}; int8 or float32 runs")

    @staticmethod
    def _quant(detail: dict) -> tuple[float, int]:
        params = detail.get("quantization_parameters") or {}
        scales = list(params.get("scales", []))
        zeros = list(params.get("zero_points", []))
        return (float(scales[0]) if scales else 0.0), (int(zeros[0]) if zeros else 0)

    def load(self, handle: int, payload: bytes) -> bytes:
        if len(payload) < 4:
            raise WorkerError("a load carries the arena size and the flatbuffer")
        (arena,) = struct.unpack_from("<I", payload)
        model = bytes(payload[4:])
        self.loaded.pop(handle, None)
        try:
            graph = self.runtime.schema_fb.Model.GetRootAsModel(model, 0)
            subgraph = graph.Subgraphs(0)
            inputs, outputs = subgraph.InputsLength(), subgraph.OutputsLength()
        except Exception as exc:  # a flatbuffer the schema cannot read
            raise WorkerError(f"the flatbuffer does not parse: {_one_line(exc)}") from exc
        if inputs != 1 or outputs != 1:
            raise WorkerError(
                f"the model has {inputs} inputs and {outputs} outputs; one of each runs"
            )
        try:
            interpreter = self.runtime.Interpreter.from_bytes(model, arena_size=int(arena))
        except (RuntimeError, ValueError) as exc:
            raise WorkerError(
                f"TFLite Micro cannot allocate the model in a {arena}-byte arena: {_one_line(exc)}"
            ) from exc
        din = interpreter.get_input_details(0)
        dout = interpreter.get_output_details(0)
        in_type, out_type = self._type(din["dtype"], "input"), self._type(dout["dtype"], "output")
        in_shape = tuple(int(d) for d in din["shape"])
        n_in = int(self.np.prod(in_shape))
        n_out = int(self.np.prod([int(d) for d in dout["shape"]]))
        in_scale, in_zero = self._quant(din) if in_type == TYPE_INT8 else (0.0, 0)
        out_scale, out_zero = self._quant(dout) if out_type == TYPE_INT8 else (0.0, 0)
        self.loaded[handle] = _Loaded(
            model, interpreter, in_shape, self.np.dtype(din["dtype"]), n_in, dout["dtype"]
        )
        return LOADED.pack(n_in, n_out, in_type, out_type, in_scale, in_zero, out_scale, out_zero)

    def predict(self, handle: int, payload: bytes) -> bytes:
        m = self.loaded.get(handle)
        if m is None:
            raise WorkerError(f"no model is loaded in interpreter {handle}")
        x = self.np.frombuffer(payload, dtype=m.in_dtype)
        if x.size != m.n_in or len(payload) != m.n_in * m.in_dtype.itemsize:
            raise WorkerError(
                f"the input has {len(payload)} bytes; the model takes {m.n_in} values"
            )
        m.interpreter.set_input(x.reshape(m.in_shape), 0)
        m.interpreter.invoke()
        out = self.np.asarray(m.interpreter.get_output(0))
        return self.np.ascontiguousarray(out, dtype=m.out_dtype).tobytes()

    def unload(self, handle: int) -> bytes:
        self.loaded.pop(handle, None)
        return b""

    def handle(self, op: int, handle: int, payload: bytes) -> bytes:
        if op == OP_LOAD:
            return self.load(handle, payload)
        if op == OP_PREDICT:
            return self.predict(handle, payload)
        if op == OP_UNLOAD:
            return self.unload(handle)
        raise WorkerError(f"unknown request {op}")


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _send(out: BinaryIO, status: int, payload: bytes = b"") -> None:
    out.write(FRAME.pack(status, 0, 0, len(payload)) + payload)
    out.flush()


def _error(out: BinaryIO, text: str) -> None:
    _send(out, 1, text.encode("utf-8", errors="replace")[:MAX_REASON])


def main() -> int:
    """Serve frames on standard input until it closes; 0 then, 1 on a broken protocol."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the firmware ends it by closing the socket
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # C-level prints of TFLM must not mix with the replies
    inp = sys.stdin.buffer
    try:
        import numpy as np
        from tflite_micro import runtime
    except ImportError as exc:
        _error(out, f"the TFLite Micro worker cannot import tflite-micro ({exc}); install it")
        return 1
    _send(out, 0, HELLO)
    interpreters = _Interpreters(runtime, np)
    while True:
        head = _read_exact(inp, FRAME.size)
        if head is None:
            return 0
        op, handle, _, length = FRAME.unpack(head)
        if length > MAX_FRAME:
            _error(out, f"a request of {length} bytes is over the worker's {MAX_FRAME}")
            return 1
        payload = _read_exact(inp, length)
        if payload is None:
            return 0
        try:
            reply = interpreters.handle(op, handle, payload)
        except WorkerError as exc:
            _error(out, str(exc))
            continue
        except Exception as exc:  # the interpreter's own errors, as a reason for the device
            _error(out, f"{type(exc).__name__}: {_one_line(exc)}")
            continue
        _send(out, 0, reply)


if __name__ == "__main__":
    sys.exit(main())
