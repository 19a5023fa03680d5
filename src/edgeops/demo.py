"""The end-to-end demo on embedded defaults.

It grows with the project; today: a generated sensor data set is versioned, a
feature definition registered, a pipeline trains a Keras model, quantizes it to
TFLite, TFLite Micro and ONNX variants measured in their runtimes, registers it
and points ``production`` at it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEMO_FEATURES", "DEMO_PIPELINE", "DemoResult", "run_demo"]

AXES = ("ax", "ay", "az")
DEMO_FEATURES: dict[str, Any] = {
    "name": "wrist",
    "description": "accelerometer window statistics and FFT band energies",
    "tags": ["imu", "har", "demo"],
    "inputs": [{"name": a, "kind": "window", "length": 64} for a in AXES],
    "steps": [
        *({"op": "window_stats", "input": a} for a in AXES),
        *({"op": "fft_bands", "input": a, "bands": 4} for a in AXES),
        {"op": "scale", "method": "standard"},
    ],
}
DEMO_PIPELINE = """\
name: wrist-har
description: activity classifier on wrist accelerometer windows (edgeops demo)
data: sensors@1
label: label
features: wrist@1
split: {test_size: 0.25, seed: 42, stratify: true}
model:
  kind: keras_mlp
  params: {hidden: [64, 32], epochs: 40}
  seed: 0
export: [tflite-f32, tflite-int8, c-tflm, onnx-f32, onnx-int8]
calibration: {samples: 300, seed: 0}
gates:
  min_accuracy: 0.85
  max_accuracy_drop: 0.02
  min_agreement: 0.97
alias: production
"""


@dataclass
class DemoResult:
    workspace: Path
    dataset: str
    features: str
    run_id: str
    model: str
    metrics: dict[str, Any]
    variants: dict[str, dict[str, Any]]


def run_demo(folder: Path, reporter: Any = None, seed: int = 0) -> DemoResult:
    """Run the demo in ``folder`` (a workspace is created there)."""
    import yaml

    from .datasets import sensor_windows, write_table
    from .errors import GateFailed
    from .pipeline import parse_pipeline
    from .pipeline.run import QuietReporter, run_pipeline
    from .workspace import Workspace

    rep = reporter or QuietReporter()
    folder = Path(folder)
    ws, _ = Workspace.init(folder)
    try:
        path = folder / "data" / "sensors.csv"
        write_table(sensor_windows(n_per_class=250, seed=seed), path)
        dv = ws.data.add(path, "sensors", message=f"generated sensor windows, seed {seed}").version
        rep.step("data add", f"{dv.ref}: {dv.rows} windows of 3×64 samples")
        (folder / "features").mkdir(exist_ok=True)
        spec_path = folder / "features" / "wrist.yaml"
        spec_path.write_text(yaml.safe_dump(DEMO_FEATURES, sort_keys=False))
        fv, _ = ws.features.add(spec_path)
        rep.step("features add", f"{fv.ref}")
        (folder / "pipelines").mkdir(exist_ok=True)
        pipe_path = folder / "pipelines" / "wrist-har.yaml"
        pipe_path.write_text(DEMO_PIPELINE)
        result = run_pipeline(ws, parse_pipeline(yaml.safe_load(DEMO_PIPELINE), DEMO_PIPELINE), rep)
        if result.status == "gated":
            raise GateFailed("; ".join(result.gate_failures))
        return DemoResult(
            folder,
            dv.ref,
            fv.ref,
            result.run_id,
            str(result.model_ref),
            result.metrics,
            result.variants,
        )
    finally:
        ws.close()
