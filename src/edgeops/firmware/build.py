"""Building the C firmware templates (``edgeops/firmware/templates/``) with gcc.

The templates are C99 and are always compiled with ``-std=c99 -Wall -Wextra
-Werror``; emlearn's headers (``emlearn.includedir``) come in with ``-isystem``
(they define unused static functions that ``-Werror`` would reject). The core
is built without any POSIX feature macro, which proves it needs none (it must
build for ESP-IDF and Zephyr too); the host port adds
``-D_POSIX_C_SOURCE=200809L`` and links libmosquitto.

Functions, lowest level first:

- :func:`templates_dir`, :func:`core_sources`, :func:`port_sources`: where things are;
- :func:`compile_check`: compile one C file to an object (does it build?);
- :func:`build_program`: compile and link sources into an executable;
- :func:`build_host`: the host firmware (``edgeops-firmware``);
- :func:`build_conformance`: the conformance tool the tests drive
  (``templates/tools/edgeops_conformance.c``).

The templates are package data (``src/edgeops/firmware/templates/``), so they are
installed with edgeops, wheel or editable; ``EDGEOPS_FIRMWARE_TEMPLATES`` points at
another template folder; ``CC`` (or
the ``cc`` argument) picks the compiler. Build failures raise
:class:`FirmwareBuildError` with the compiler's output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..errors import ConfigError, InvalidInput, MissingExtra

__all__ = [
    "C_FLAGS",
    "HOST_DEFINES",
    "FirmwareBuildError",
    "build_conformance",
    "build_host",
    "build_program",
    "compile_check",
    "compiler",
    "core_sources",
    "emlearn_include",
    "has_libmosquitto",
    "port_sources",
    "templates_dir",
]

C_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror")
HOST_DEFINES = ("-D_POSIX_C_SOURCE=200809L",)
PORTS = ("host", "esp-idf", "zephyr")


class FirmwareBuildError(InvalidInput):
    """A template did not compile or link; ``output`` holds what the compiler said."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def templates_dir() -> Path:
    """The firmware templates: ``edgeops/firmware/templates`` as installed (package data),
    or ``$EDGEOPS_FIRMWARE_TEMPLATES``."""
    env = os.environ.get("EDGEOPS_FIRMWARE_TEMPLATES")
    root = Path(env) if env else Path(__file__).resolve().parent / "templates"
    if not (root / "core" / "edgeops_agent.h").is_file():
        raise ConfigError(
            f"no firmware templates at {root}; reinstall edgeops, or set "
            "EDGEOPS_FIRMWARE_TEMPLATES to a templates folder (src/edgeops/firmware/templates "
            "of an edgeops checkout)"
        )
    return root


def core_sources(root: Path | None = None) -> list[Path]:
    """Every C file of the portable core."""
    return sorted((root or templates_dir()).joinpath("core").glob("*.c"))


def port_sources(port: str, root: Path | None = None) -> list[Path]:
    """The C files of a port (``host``, ``esp-idf``, ``zephyr``)."""
    if port not in PORTS:
        raise InvalidInput(f"unknown port {port!r}; ports: {', '.join(PORTS)}")
    return sorted((root or templates_dir()).joinpath("ports", port).rglob("*.c"))


def emlearn_include() -> Path:
    """emlearn's C headers (``eml_net.h`` and friends), from the installed package."""
    from ..convert.emlearn_c import _emlearn

    path = Path(_emlearn().includedir)
    if not (path / "eml_net.h").is_file():
        raise MissingExtra("emlearn", "mcu")
    return path


def compiler(cc: str | None = None) -> str:
    name = cc or os.environ.get("CC", "gcc")
    if shutil.which(name) is None:
        raise ConfigError(f"C compiler {name!r} not found; install gcc or set CC")
    return name


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if "error" in ln] or done.stderr.splitlines()
        first = lines[0].strip() if lines else f"exit {done.returncode}"
        raise FirmwareBuildError(f"{what} failed: {first}", done.stderr)


def _defines(values: Mapping[str, int | str] | None) -> list[str]:
    return [f"-D{k}={v}" for k, v in (values or {}).items()]


def compile_check(
    source: Path,
    out: Path,
    *,
    includes: Iterable[Path] = (),
    defines: Sequence[str] = (),
    cc: str | None = None,
    extra: Sequence[str] = (),
) -> Path:
    """Compile ``source`` to the object ``out`` with :data:`C_FLAGS` (plus ``-pedantic``)."""
    root = templates_dir()
    command = [
        compiler(cc),
        *C_FLAGS,
        "-pedantic",
        "-O2",
        *defines,
        *extra,
        "-I",
        str(root / "core"),
        *[f"-I{p}" for p in includes],
        "-isystem",
        str(emlearn_include()),
        "-c",
        str(source),
        "-o",
        str(out),
    ]
    _run(command, f"compiling {source.name}")
    return out


def build_program(
    sources: Sequence[Path],
    out: Path,
    *,
    includes: Iterable[Path] = (),
    defines: Sequence[str] = (),
    libs: Sequence[str] = (),
    cc: str | None = None,
    optimize: str = "-O2",
) -> Path:
    """Compile and link ``sources`` (with the core's include folder) into ``out``."""
    root = templates_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        compiler(cc),
        *C_FLAGS,
        optimize,
        *defines,
        "-I",
        str(root / "core"),
        *[f"-I{p}" for p in includes],
        "-isystem",
        str(emlearn_include()),
        *[str(s) for s in sources],
        "-o",
        str(out),
        *libs,
        "-lm",
    ]
    _run(command, f"building {out.name}")
    return out


def has_libmosquitto(cc: str | None = None) -> bool:
    """Whether libmosquitto's header and library are installed (Debian: libmosquitto-dev)."""
    probe = "#include <mosquitto.h>\nint main(void) { return mosquitto_lib_init(); }\n"
    done = subprocess.run(
        [compiler(cc), "-x", "c", "-", "-o", os.devnull, "-lmosquitto"],
        input=probe,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0


def build_host(
    out_dir: Path,
    *,
    config: Mapping[str, int | str] | None = None,
    cc: str | None = None,
    optimize: str = "-O2",
    tflm: bool = False,
) -> Path:
    """The host firmware ``out_dir/edgeops-firmware`` (core + ports/host + libmosquitto).

    ``config`` overrides edgeops_config.h limits, e.g. ``{"EDGEOPS_MODEL_MAX_BYTES": 65536}``.
    ``tflm``: also run TFLite flatbuffers (``EDGEOPS_WITH_TFLM=1``: ``ports/host/host_tflm.c``
    runs the tflite-micro interpreter in a coprocess; the state lists ``tflite-micro``).
    """
    if not has_libmosquitto(cc):
        raise ConfigError(
            "the host firmware needs libmosquitto; install it "
            "(Debian: apt-get install libmosquitto-dev)"
        )
    root = templates_dir()
    return build_program(
        [*core_sources(root), *port_sources("host", root)],
        Path(out_dir) / "edgeops-firmware",
        includes=[root / "ports" / "host"],
        defines=[
            *HOST_DEFINES,
            *_defines({**({"EDGEOPS_WITH_TFLM": 1} if tflm else {}), **(config or {})}),
        ],
        libs=["-lmosquitto"],
        cc=cc,
        optimize=optimize,
    )


def build_conformance(out_dir: Path, *, cc: str | None = None) -> Path:
    """The conformance tool: the core's pure parts behind a line protocol on stdin/stdout
    (``templates/tools/edgeops_conformance.c``), for comparing them with Python."""
    root = templates_dir()
    return build_program(
        [*core_sources(root), root / "tools" / "edgeops_conformance.c"],
        Path(out_dir) / "edgeops-conformance",
        defines=HOST_DEFINES,
        cc=cc,
    )
