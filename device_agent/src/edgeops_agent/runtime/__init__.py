"""Model runtimes on the device: the first one installed wins.

``load_runner(fmt, model_bytes)`` returns a :class:`Runner` for a TFLite
(``tflite``) or ONNX (``onnx``) model. TFLite prefers ai-edge-litert, then
tflite-runtime; ONNX uses onnxruntime. Each backend module imports its runtime
lazily, so importing this package costs nothing.
"""

from __future__ import annotations

from .base import Runner, RuntimeMissing, TensorInfo

__all__ = ["Runner", "RuntimeMissing", "TensorInfo", "available_runtimes", "load_runner"]


def available_runtimes() -> list[str]:
    """Names of the installed runtimes, in order of preference."""
    import importlib.util

    found = []
    for module, name in (
        ("ai_edge_litert", "ai-edge-litert"),
        ("tflite_runtime", "tflite-runtime"),
        ("onnxruntime", "onnxruntime"),
    ):
        if importlib.util.find_spec(module) is not None:
            found.append(name)
    return found


def load_runner(fmt: str, model_bytes: bytes, *, num_threads: int = 1) -> Runner:
    """A runner for ``model_bytes`` in format ``fmt`` (``tflite`` or ``onnx``)."""
    if fmt == "tflite":
        from .tflite import TFLiteRunner

        return TFLiteRunner(model_bytes, num_threads=num_threads)
    if fmt == "onnx":
        from .onnx import OnnxRunner

        return OnnxRunner(model_bytes, num_threads=num_threads)
    raise ValueError(f"unknown model format {fmt!r}; expected 'tflite' or 'onnx'")
