"""Run a loadable emlearn artifact (EOML) on the host with the firmware's own C loader.

:class:`EomlRunner` is to the ``emlearn-loadable`` variant what
:class:`~edgeops.convert.emlearn_c.EmlearnCRunner` is to ``c-emlearn``: the
pipeline measures the variant (accuracy, agreement with the original, latency)
by running the bytes a device receives through the code a device runs —
``templates/core/edgeops_model.c`` and ``edgeops_model_emlearn.c`` — compiled
with gcc into ``templates/tools/edgeops_eoml_run.c`` (built once per process,
with limits large enough for any artifact the pipeline makes; a firmware's own
limits are set by ``edgeops firmware generate``).
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..errors import EdgeopsError, InvalidInput
from .artifact import read_header

__all__ = ["EomlRunner", "eoml_runner_binary"]

# limits of the measuring tool only (static buffers of a host process)
RUNNER_CONFIG = {
    "EDGEOPS_MODEL_MAX_BYTES": 16 << 20,
    "EDGEOPS_MAX_FEATURES": 4096,
    "EDGEOPS_MAX_CLASSES": 1024,
    "EDGEOPS_MLP_MAX_WIDTH": 4096,
    "EDGEOPS_MLP_MAX_LAYERS": 16,
}
_LOCK = threading.Lock()
_BUILT: dict[str, Path] = {}


def eoml_runner_binary(cc: str | None = None) -> Path:
    """The compiled ``edgeops-eoml-run`` (built on first use, removed at exit)."""
    from .build import build_program, templates_dir

    key = cc or ""
    with _LOCK:
        if key not in _BUILT or not _BUILT[key].exists():
            root = templates_dir()
            folder = Path(tempfile.mkdtemp(prefix="edgeops-eoml-"))
            atexit.register(shutil.rmtree, folder, True)
            _BUILT[key] = build_program(
                [
                    root / "core" / "edgeops_err.c",
                    root / "core" / "edgeops_model.c",
                    root / "core" / "edgeops_model_emlearn.c",
                    root / "tools" / "edgeops_eoml_run.c",
                ],
                folder / "edgeops-eoml-run",
                defines=[f"-D{k}={v}u" for k, v in RUNNER_CONFIG.items()],
                cc=cc,
            )
        return _BUILT[key]


class EomlRunner:
    """EOML bytes run by the firmware's loader on the host; predicts class indices."""

    runtime = "edgeops-firmware-c"

    def __init__(self, data: bytes, *, cc: str | None = None) -> None:
        header = read_header(data)
        if len(data) > RUNNER_CONFIG["EDGEOPS_MODEL_MAX_BYTES"]:
            raise InvalidInput(f"the EOML artifact is {len(data)} bytes; the runner takes 16 MiB")
        self.n_features = header.n_features
        self.n_classes = header.n_classes
        self.binary = eoml_runner_binary(cc)
        self._tmp: tempfile.TemporaryDirectory[str] | None = tempfile.TemporaryDirectory(
            prefix="edgeops-eoml-model-"
        )
        self.model_path = Path(self._tmp.name) / "model.eoml"
        self.model_path.write_bytes(bytes(data))
        self._run([], np.zeros((1, self.n_features), dtype=np.float32))  # loads, or says why

    def _run(self, args: list[str], X: np.ndarray) -> bytes:
        rows = np.ascontiguousarray(X, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise InvalidInput(f"expected rows of {self.n_features} features, got {rows.shape}")
        done = subprocess.run(
            [str(self.binary), str(self.model_path), *args],
            input=rows.tobytes(),
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            message = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
            raise EdgeopsError(f"the EOML artifact failed in the firmware's loader: {message}")
        return done.stdout

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class indices (positions in ``classes_``) of the rows of ``X``."""
        out = np.frombuffer(self._run([], X), dtype=np.int32).astype(np.int64)
        if len(out) != len(X):
            raise EdgeopsError(f"the EOML runner returned {len(out)} classes for {len(X)} rows")
        return out

    def latency_ms(self, X: np.ndarray, samples: int = 200) -> dict[str, float]:
        """Median and p95 single-prediction latency in C, in milliseconds (as
        :meth:`EmlearnCRunner.latency_ms <edgeops.convert.emlearn_c.EmlearnCRunner.latency_ms>`)."""
        from ..convert.emlearn_c import latency_summary

        rows = np.asarray(X)[: max(1, min(int(samples), 256))]
        return latency_summary(self._run(["time", str(len(rows))], rows))

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EomlRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
