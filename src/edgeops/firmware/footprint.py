"""The firmware footprint of a variant on a Cortex-M4F, measured and recorded.

:func:`measure_footprint` builds a generated ``cortex-m4`` project's footprint
image (``make build/footprint.elf``: the core, the model loader, the feature
transforms and the built-in model, with buffers sized for the model; newlib-nano;
``--gc-sections``) with ``arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb
-mfloat-abi=hard -mfpu=fpv4-sp-d16 -Os``, reads ``arm-none-eabi-size``, and, for
TFLite variants, measures the smallest TFLite Micro tensor arena with the
tflite-micro Python package (:func:`edgeops.convert.tflm.smallest_arena`). It
stores on the variant (``metrics["footprint"]``)::

    {"target": "cortex-m4", "flash_bytes": text + data, "ram_bytes": data + bss,
     "arena_bytes": TFLM arena (0 for emlearn), "text", "data", "bss",
     "model_bytes", "toolchain": "arm-none-eabi-gcc ... 12.2.1 ...", "measured_at",
     "config": {buffer sizes}}

A rollout skips devices whose declared ``flash_bytes`` / ``ram_bytes`` are below
``flash_bytes`` / ``ram_bytes + arena_bytes`` (``edgeops.fleet.deploy``). For
TFLite the TFLite Micro library itself is not in the image (it comes from the
board SDK): its own flash comes on top.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .build import FirmwareBuildError

__all__ = [
    "CROSS",
    "build_footprint",
    "check_toolchain",
    "describe",
    "measure_footprint",
    "read_size",
    "toolchain_version",
]

CROSS = "arm-none-eabi-"
INSTALL_HINT = "Debian: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi"


def check_toolchain(cross: str = CROSS) -> None:
    """ConfigError unless the cross compiler, its size tool and make are installed."""
    for tool in (f"{cross}gcc", f"{cross}size", "make"):
        if shutil.which(tool) is None:
            raise ConfigError(
                f"{tool} not found: the cortex-m4 footprint needs the GNU Arm toolchain and "
                f"make ({INSTALL_HINT}); or generate with --no-footprint"
            )


def toolchain_version(cross: str = CROSS) -> str:
    done = subprocess.run([f"{cross}gcc", "--version"], capture_output=True, text=True, check=False)
    return (done.stdout.splitlines() or ["unknown"])[0].strip()


def read_size(elf: Path, cross: str = CROSS) -> dict[str, int]:
    """``text``, ``data``, ``bss`` of an ELF as ``arm-none-eabi-size -B -d`` reports them."""
    done = subprocess.run(
        [f"{cross}size", "-B", "-d", str(elf)], capture_output=True, text=True, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or len(lines) < 2:
        raise FirmwareBuildError(f"{cross}size failed on {elf}", done.stderr)
    text, data, bss = (int(v) for v in lines[1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


def build_footprint(project: Path, cross: str = CROSS) -> Path:
    """``make build/footprint.elf`` in a generated cortex-m4 project; the ELF."""
    check_toolchain(cross)
    jobs = str(max(1, min(8, os.cpu_count() or 1)))
    done = subprocess.run(
        ["make", "-C", str(project), "-j", jobs, f"CROSS={cross}", "build/footprint.elf"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if "error" in ln] or [
            f"exit {done.returncode}"
        ]
        raise FirmwareBuildError(f"the cortex-m4 build failed: {lines[0].strip()}", done.stderr)
    return project / "build" / "footprint.elf"


def measure_footprint(
    ws: Any,
    mv: Any,
    variant: Any,
    project: Path,
    model: bytes,
    X: np.ndarray,
    *,
    record: bool = True,
    cross: str = CROSS,
) -> dict[str, Any]:
    """Build, size and (``record``) store the footprint of ``variant`` (module docstring)."""
    import json

    from .project import PROJECT_FILE

    info = json.loads((Path(project) / PROJECT_FILE).read_text())
    if info["target"] != "cortex-m4":
        raise ConfigError(f"{project} is a {info['target']} project; footprints are cortex-m4")
    sizes = read_size(build_footprint(Path(project), cross), cross)
    arena = 0
    if info["form"] == "tflm":
        from ..convert.tflm import smallest_arena

        arena = smallest_arena(model, np.asarray(X[:1], dtype=np.float32))
    fp = {
        "target": "cortex-m4",
        "flash_bytes": sizes["text"] + sizes["data"],
        "ram_bytes": sizes["data"] + sizes["bss"],
        "arena_bytes": arena,
        **sizes,
        "model_bytes": len(model),
        "toolchain": toolchain_version(cross),
        "cflags": "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 -Os, "
        "newlib-nano, --gc-sections",
        "measured_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "config": info["config"],
    }
    if record:
        ws.registry.record_variant_metrics(mv.ref, variant.name, {"footprint": fp})
    return fp


def describe(fp: dict[str, Any]) -> str:
    """One line: ``cortex-m4: 41.2 KiB flash, 30.1 KiB RAM (+ 2.0 KiB arena)``."""
    arena = fp.get("arena_bytes") or 0
    extra = f" (+ {arena / 1024:.1f} KiB TFLM arena)" if arena else ""
    return (
        f"{fp['target']}: {fp['flash_bytes'] / 1024:.1f} KiB flash, "
        f"{fp['ram_bytes'] / 1024:.1f} KiB RAM{extra}"
    )
