"""The demo (the README's first command) runs end to end and leaves a complete lineage."""

from __future__ import annotations

import subprocess
import sys

from edgeops import Workspace
from edgeops.demo import run_demo
from edgeops.pipeline.run import QuietReporter


def test_demo_registers_a_quantized_model_with_lineage(tmp_path):
    rep = QuietReporter()
    result = run_demo(tmp_path / "demo", rep, seed=0)
    assert result.model == "wrist-har@1"
    assert result.metrics["accuracy"] > 0.9
    assert set(result.variants) == {"tflite-f32", "tflite-int8", "c-tflm", "onnx-f32", "onnx-int8"}
    assert all(v["agreement"] >= 0.97 for v in result.variants.values())
    assert [s[0] for s in rep.steps][:3] == ["data add", "features add", "data"]
    ws = Workspace.open(tmp_path / "demo")
    try:
        lin = ws.registry.lineage("wrist-har@production")
        assert lin["model"] == "wrist-har@1"
        assert lin["run"]["seeds"] == {"split": 42, "model": 0, "calibration": 0}
        assert lin["dataset"]["rows"] == 1000
        assert lin["features"] == "wrist@1"
        assert ws.features.models_using("wrist@1") == ["wrist-har@1"]
    finally:
        ws.close()


def test_demo_cli(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "edgeops", "demo", "--dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "register           wrist-har@1 (production)" in proc.stdout
    assert "fully_quantize" not in proc.stdout + proc.stderr  # converter noise is hidden
