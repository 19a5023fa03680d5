"""The runner interface every runtime backend implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class RuntimeMissing(RuntimeError):
    """No runtime for this model format is installed on this device."""


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the runtime sees it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32", "int8", ...
    scale: float = 0.0  # quantization scale; 0.0 when not quantized
    zero_point: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "scale": self.scale,
            "zero_point": self.zero_point,
        }


class Runner(Protocol):
    """A loaded model. ``predict`` takes and returns float32 batches.

    Quantized models quantize inputs and dequantize outputs inside ``predict``,
    so callers never see int8 tensors.
    """

    runtime: str  # e.g. "ai-edge-litert", "tflite-runtime", "onnxruntime"
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs of the first output tensor for a batch ``x`` (first axis = batch)."""
        ...
