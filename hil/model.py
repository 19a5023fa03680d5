"""The campaign's model: a small activity classifier trained here on generated
accelerometer windows (scikit-learn MLP, exported to ONNX), registered in the run's
own workspace; and rows of the same kind for the devices to predict on."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

__all__ = ["MODEL_NAME", "prediction_rows", "register_model"]

MODEL_NAME = "hil-har"
CHANNELS = ("ax", "ay", "az")
FEATURES = {
    "name": "hil-wrist",
    "inputs": [{"name": a, "kind": "window", "length": 64} for a in CHANNELS],
    "steps": [*({"op": "window_stats", "input": a} for a in CHANNELS), {"op": "scale"}],
}


def register_model(ws: Any, folder: Path, seed: int = 0) -> str:
    """Train and register the model; its reference (``hil-har@1`` in a new workspace)."""
    import yaml

    from edgeops.datasets import sensor_windows, write_table
    from edgeops.pipeline import parse_pipeline
    from edgeops.pipeline.run import run_pipeline
    from hil.errors import HilError

    folder.mkdir(parents=True, exist_ok=True)
    write_table(sensor_windows(n_per_class=60, seed=5), folder / "sensors.csv")
    ws.data.add(folder / "sensors.csv", "hil-sensors")  # the run's own workspace: version 1
    ws.features.add(FEATURES)
    doc = {
        "name": MODEL_NAME,
        "data": "hil-sensors@1",
        "label": "label",
        "features": "hil-wrist@1",
        "model": {"kind": "mlp", "params": {"hidden_layer_sizes": [16]}, "seed": seed},
        "export": ["onnx-f32"],
    }
    with warnings.catch_warnings():  # a small MLP on few rows: convergence is not the point
        warnings.filterwarnings("ignore", message=".*[Cc]onverge")
        result = run_pipeline(ws, parse_pipeline(doc, yaml.safe_dump(doc)))
    if result.status != "registered":
        raise HilError(f"training the campaign's model ended {result.status!r}, not registered")
    latest = max(v.version for v in ws.registry.versions(MODEL_NAME))
    return f"{MODEL_NAME}@{latest}"


def prediction_rows(n: int = 40, seed: int = 11) -> list[dict[str, list[float]]]:
    """``n`` raw samples (``{"ax": [64 values], "ay": ..., "az": ...}``) of the model's kind."""
    from edgeops.datasets import sensor_windows

    frame = sensor_windows(n_per_class=max(1, n // 4 + 1), seed=seed)
    cols = {a: [f"{a}_{i:03d}" for i in range(64)] for a in CHANNELS}
    values = {a: frame[c].to_numpy() for a, c in cols.items()}
    rows = [
        {a: [round(float(v), 5) for v in values[a][i]] for a in CHANNELS} for i in range(len(frame))
    ]
    return rows[:n]
