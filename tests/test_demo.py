"""The demo (the README's first command) runs end to end and leaves a complete lineage."""

from __future__ import annotations

import subprocess
import sys

from edgeops import Workspace
from edgeops.demo import run_demo
from edgeops.model_io import load_sklearn


def test_demo_registers_a_model_with_lineage(tmp_path):
    steps = []
    result = run_demo(tmp_path / "demo", step=steps.append, seed=0)
    assert result.model == "digits@1"
    assert 0.93 < result.accuracy < 0.99
    assert steps[0] == "creating the workspace"
    ws = Workspace.open(tmp_path / "demo")
    try:
        mv = ws.registry.get_version("digits@production")
        assert mv.version == 1
        lin = ws.registry.lineage("digits@production")
        assert lin["run"]["seeds"] == {"split": 42, "model": 0}
        assert lin["dataset"]["rows"] == 1797
        model = load_sklearn(ws.registry.variant_bytes(mv.ref))
        assert list(model.classes_) == list(range(10))
        run = ws.runs.get(result.run_id)
        assert run.metrics["accuracy"] == result.accuracy
    finally:
        ws.close()


def test_demo_cli(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "edgeops", "demo", "--dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "digits@1 (production)" in proc.stdout
