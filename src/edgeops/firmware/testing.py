"""``edgeops firmware test``: a generated project's C against the Python reference.

:func:`run_vectors` builds the project's ``test/`` with gcc (``make -C DIR/test``:
the core's model loaders, ``edgeops_features.c`` and the generated ``app/``, with
the project's buffer sizes), runs its held-out raw samples through the C
transforms and the model, and compares with ``test/expected.json``:

- features: every float32 within ``|c - py| <= abs + rel * |py|`` (the project's
  tolerance, :data:`edgeops.firmware.project.TOLERANCE`: rel 1e-5, abs 1e-6), NaN
  where Python has NaN; how many are bit for bit equal is reported too;
- predictions of emlearn variants (EOML or inline C): exactly the reference's
  classes (emlearn's inline C compiled by gcc, on Python's features). TFLite
  models are not run (TFLite Micro comes from the board SDK): only their features
  are compared.

A ``host`` project's firmware (``build/edgeops-firmware``, libmosquitto) is built
too when libmosquitto is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InvalidInput
from .build import has_libmosquitto
from .project import PROJECT_FILE

__all__ = ["FirmwareTestResult", "compare_features", "run_vectors"]


@dataclass
class FirmwareTestResult:
    project: Path
    model: str
    variant: str
    target: str
    form: str
    rows: int = 0
    builds: list[dict[str, str]] = field(default_factory=list)
    features: dict[str, Any] = field(default_factory=dict)
    predictions: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            not self.errors
            and all(b["status"] != "failed" for b in self.builds)
            and bool(self.features.get("passed"))
            and self.predictions.get("passed", True) is not False
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": str(self.project),
            "model": self.model,
            "variant": self.variant,
            "target": self.target,
            "form": self.form,
            "rows": self.rows,
            "passed": self.passed,
            "builds": self.builds,
            "features": self.features,
            "predictions": self.predictions,
            "errors": self.errors,
        }


def _make(folder: Path, target: str, cc: str | None) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        raise ConfigError("make not found; install it (Debian: apt-get install make)")
    args = ["make", "-C", str(folder), "-j", str(max(1, min(8, os.cpu_count() or 1))), target]
    if cc:
        args.append(f"CC={cc}")
    return subprocess.run(args, capture_output=True, text=True, check=False)


def _first_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln] or text.splitlines()
    return lines[0].strip() if lines else ""


def _as_float(v: Any) -> float:
    return float(v)  # JSON numbers, or "nan" / "inf" / "-inf" for the non-finite


def compare_features(got: np.ndarray, want: np.ndarray, rel: float, abs_: float) -> dict[str, Any]:
    """Float32 features from C against Python's: counts, the largest errors, the worst."""
    got = np.asarray(got, dtype=np.float32).astype(np.float64)
    want = np.asarray(want, dtype=np.float32).astype(np.float64)
    both_nan = np.isnan(got) & np.isnan(want)
    same_inf = np.isinf(want) & (got == want)
    finite = np.isfinite(got) & np.isfinite(want)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(finite, np.abs(got - want), np.inf)
        rel_err = np.where(finite & (want != 0), err / np.maximum(np.abs(want), 1e-300), 0.0)
    ok = both_nan | same_inf | (finite & (err <= abs_ + rel * np.abs(want)))
    out: dict[str, Any] = {
        "compared": int(want.size),
        "within_tolerance": int(ok.sum()),
        "bit_exact": int((both_nan | (got == want)).sum()),
        "max_abs_error": float(err[finite].max()) if finite.any() else 0.0,
        "max_rel_error": float(rel_err.max()) if rel_err.size else 0.0,
        "tolerance": {"rel": rel, "abs": abs_},
        "passed": bool(ok.all()),
    }
    if not ok.all():
        r, c = (int(i) for i in np.argwhere(~ok)[0])
        out["first_mismatch"] = {"row": r, "feature": c, "c": float(got[r, c]),
                                 "python": float(want[r, c])}  # fmt: skip
    return out


def run_vectors(project: Path, *, cc: str | None = None) -> FirmwareTestResult:
    """Build and run a generated project's test vectors (module docstring)."""
    project = Path(project).resolve()
    info_path = project / PROJECT_FILE
    if not info_path.is_file():
        raise InvalidInput(
            f"{project} is not a generated firmware project (no {PROJECT_FILE}); "
            "make one with `edgeops firmware generate`"
        )
    info = json.loads(info_path.read_text())
    expected = json.loads((project / "test" / "expected.json").read_text())
    result = FirmwareTestResult(
        project, info["model"], info["variant"], info["target"], info["form"]
    )
    result.rows = int(expected["rows"])
    done = _make(project / "test", "build/edgeops-vectors", cc)
    if done.returncode != 0:
        result.builds.append({"what": "test vectors (gcc)", "status": "failed",
                              "detail": _first_error(done.stderr)})  # fmt: skip
        result.errors.append(f"the test build failed: {_first_error(done.stderr)}")
        return result
    result.builds.append({"what": "test vectors (gcc)", "status": "ok", "detail": ""})
    if info["target"] == "host":
        if has_libmosquitto(cc):
            fw = _make(project, "build/edgeops-firmware", cc)
            ok = fw.returncode == 0
            result.builds.append({"what": "host firmware (gcc, libmosquitto)",
                                  "status": "ok" if ok else "failed",
                                  "detail": "" if ok else _first_error(fw.stderr)})  # fmt: skip
        else:
            result.builds.append({"what": "host firmware (gcc, libmosquitto)",
                                  "status": "skipped",
                                  "detail": "libmosquitto-dev is not installed"})  # fmt: skip
    with (project / "test" / "vectors.txt").open("rb") as vectors:
        run = subprocess.run(
            [str(project / "test" / "build" / "edgeops-vectors")],
            stdin=vectors,
            capture_output=True,
            check=False,
        )
    if run.returncode != 0:
        result.errors.append(
            f"edgeops-vectors failed (exit {run.returncode}): "
            + run.stderr.decode(errors="replace").strip()[:300]
        )
        return result
    lines = run.stdout.decode().splitlines()
    if len(lines) != result.rows:
        result.errors.append(f"edgeops-vectors answered {len(lines)} of {result.rows} samples")
        return result
    n_features = int(info["n_features"])
    got = np.full((result.rows, n_features), np.nan, dtype=np.float32)
    classes: list[int | None] = []
    for r, line in enumerate(lines):
        parts = line.split()
        if parts[0] == "error" or len(parts) != n_features + 1:
            result.errors.append(f"sample {r}: {line[:200]}")
            classes.append(None)
            continue
        classes.append(None if parts[0] == "-" else int(parts[0]))
        got[r] = np.array([float(v) for v in parts[1:]], dtype=np.float32)
    want = np.array([[_as_float(v) for v in row] for row in expected["features"]], np.float32)
    tol = expected["tolerance"]
    result.features = compare_features(got, want, float(tol["rel"]), float(tol["abs"]))
    ref = expected["classes"]
    if info["form"] == "tflm" and all(c is None for c in classes):
        result.predictions = {
            "status": "not run",
            "detail": "TFLite Micro comes from the board SDK; features only",
        }
    else:  # fmt: skip
        agree = sum(1 for c, e in zip(classes, ref, strict=True) if c == e)
        mismatches = [r for r, (c, e) in enumerate(zip(classes, ref, strict=True)) if c != e]
        labels = expected["labels"]
        original = expected["original_classes"]
        result.predictions = {
            "status": "compared",
            "rows": len(ref),
            "equal_to_reference": agree,
            "reference": expected.get("reference", ""),
            "mismatched_rows": mismatches[:20],
            "agreement_with_original": round(
                sum(c == o for c, o in zip(classes, original, strict=True)) / max(1, len(ref)), 6
            ),
            "accuracy": round(
                sum(c == t for c, t in zip(classes, labels, strict=True)) / max(1, len(ref)), 6
            ),
            "passed": agree == len(ref),
        }
    return result
