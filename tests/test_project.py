"""Project hygiene: lint, the README's commands, the public API."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_the_readme_test_command():
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    commands = [ln for ln in block.group(1).splitlines() if ln.strip()]
    assert len(commands) == 2
    assert "edgeops demo" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_public_names():
    import edgeops

    assert sorted(edgeops.__all__) == ["EdgeopsError", "Settings", "Workspace", "__version__"]
