"""The demo (the README's first command) runs the whole loop end to end by itself."""

from __future__ import annotations

import os
import subprocess
import sys

from edgeops import Workspace
from edgeops.demo import run_demo
from edgeops.localbroker import free_port
from edgeops.pipeline.run import QuietReporter
from edgeops.retrain import decisions


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


def test_demo_cli_runs_the_loop_on_a_broker_it_starts(tmp_path):
    """No broker where the configuration points: the demo starts one, then runs the loop
    with ten simulated agents: drift, alert, retraining, canary, the fleet on version 2."""
    env = {**os.environ, "EDGEOPS_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}"}
    env.pop("EDGEOPS_HOME", None)
    folder = tmp_path / "d"
    proc = subprocess.run(
        [sys.executable, "-m", "edgeops", "demo", "--dir", str(folder), "--devices", "10"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "COLUMNS": "200"},
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr + out
    assert "started mosquitto at mqtt://127.0.0.1:" in out
    assert "sensor fault injected on 5 south devices" in out
    assert "10 devices serve version(s) 2" in out
    assert "fully_quantize" not in out + proc.stderr  # converter noise is hidden
    ws = Workspace.open(folder)
    try:
        [d] = decisions(ws, "wrist-har")
        assert (d["trigger"], d["decision"], d["status"]) == ("alert", "canary", "promoted")
        assert ws.registry.get_version("wrist-har@production").ref == "wrist-har@2"
        cmp = d["comparison"]["variants"]["tflite-int8"]
        assert cmp["challenger"]["fleet"]["accuracy"] > cmp["champion"]["fleet"]["accuracy"]
        assert ws.data.get(d["data"]).origin["kind"] == "fleet_samples"
    finally:
        ws.close()
