"""What the harness copies to a device: the agent as a wheel built here from
``device_agent/``, or its source as a tarball (``edgeops_agent`` and
``edgeops_protocol``, no caches). Built once per run, in the run's folder."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from hil.errors import HilError

__all__ = ["AGENT_SOURCE", "Bundle"]

AGENT_SOURCE = Path(__file__).resolve().parent.parent / "device_agent"
_PACKAGES = ("edgeops_agent", "edgeops_protocol")


@dataclass
class Bundle:
    folder: Path
    source: Path = AGENT_SOURCE
    _wheel: Path | None = None
    _tarball: bytes | None = None

    def wheel(self) -> Path:
        """``edgeops_agent-<version>-py3-none-any.whl``, built with pip (no network) from a
        copy of the source, so the build leaves nothing in the checkout."""
        if self._wheel is None:
            out, tree = self.folder / "wheels", self.folder / "device_agent"
            out.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tree, ignore_errors=True)
            shutil.copytree(
                self.source,
                tree,
                ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
            )
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--quiet",
                "-w",
                str(out),
                str(tree),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            found = sorted(out.glob("edgeops_agent-*.whl"))
            if proc.returncode != 0 or not found:
                raise HilError(f"could not build the agent's wheel: {proc.stderr.strip()[-500:]}")
            self._wheel = found[-1]
        return self._wheel

    def tarball(self) -> bytes:
        """The agent's packages as a gzipped tar, paths relative to ``src/``."""
        if self._tarball is None:
            src = self.source / "src"
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                for package in _PACKAGES:
                    for path in sorted((src / package).rglob("*")):
                        if "__pycache__" in path.parts or path.suffix == ".pyc":
                            continue
                        if path.is_file():
                            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
            self._tarball = buf.getvalue()
        return self._tarball
