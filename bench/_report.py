"""What the benchmarks' reports share: the machine they ran on, and the C-level chatter of
native libraries (TensorFlow, the converters) sent to a log file."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["machine", "stderr_to"]


@contextlib.contextmanager
def stderr_to(log: Path | None) -> Iterator[None]:
    """Send file descriptor 2 (TensorFlow's and the converters' C-level chatter) to ``log``."""
    if log is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log, "ab") as fh:
            os.dup2(fh.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def machine(packages: Iterable[str]) -> dict[str, Any]:
    """The CPU, cores, load, Python and platform, and the versions of those of ``packages``
    that are installed."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }
