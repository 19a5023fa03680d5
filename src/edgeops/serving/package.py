"""``edgeops package``: a container build context that serves one model variant.

The context needs neither the registry nor its database: it holds the variant's
bytes and what serving them needs, as files (``model/``), the serving core as
``serve.py`` (a copy of :mod:`edgeops.serving.standalone`, standard library
HTTP), the device agent's ``edgeops_agent`` and ``edgeops_protocol`` packages
vendored next to it (the runtimes and feature transforms a device runs), a
``requirements.txt`` pinned to the versions installed here (numpy, the model's
runtime and what they need — never TensorFlow), a ``Dockerfile`` and a
``README.md``. It is built in a temporary folder next to the destination and
renamed into place, so the destination is whole or untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Conflict, InvalidInput, MissingExtra
from .load import device_order, load_variant, runtime_installed
from .standalone import MANIFEST_FORMAT

__all__ = ["DEFAULT_PORT", "PackageResult", "build_context", "pinned_requirements"]

DEFAULT_PORT = 8080
PACKAGED_FORMATS = ("tflite", "onnx")
_SUFFIX = {"tflite": ".tflite", "onnx": ".onnx"}
_FAMILY = {"tflite": "tflite", "onnx": "onnx"}


@dataclass(frozen=True)
class PackageResult:
    out: Path
    model: str
    variant: str
    format: str
    runtime: str  # the runtime's distribution, e.g. ai-edge-litert
    image: str  # a suggested image tag
    port: int
    requirements: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "out": str(self.out)}


def _runtime_distribution(fmt: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    candidates = ("ai-edge-litert", "tflite-runtime") if fmt == "tflite" else ("onnxruntime",)
    for name in candidates:
        try:
            version(name)
        except PackageNotFoundError:
            continue
        return name
    extra = "tensorflow" if fmt == "tflite" else "onnx"
    raise MissingExtra(candidates[0], extra)


def pinned_requirements(roots: list[str]) -> list[str]:
    """``name==version`` of ``roots`` and everything they require, as installed here."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = canonicalize_name(name)
        if key in pins:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError as exc:
            raise MissingExtra(name, "all") from exc
        pins[key] = f"{dist.metadata['Name']}=={dist.version}"
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return [pins[k] for k in sorted(pins)]


def _choose(mv: Any, wanted: str | None) -> Any:
    by_name = {v.name: v for v in mv.variants}
    packable = [n for n in sorted(by_name) if by_name[n].format in PACKAGED_FORMATS]
    hint = (
        f"choose one of: {', '.join(packable)}"
        if packable
        else f"add one with `edgeops quantize {mv.ref} --format onnx-f32`"
    )
    if wanted is not None:
        v = by_name.get(wanted)
        if v is None:
            raise InvalidInput(f"{mv.ref} has no variant {wanted!r}; {hint}")
        if v.format not in PACKAGED_FORMATS:
            raise InvalidInput(
                f"a package serves a TFLite or ONNX variant in its device runtime; "
                f"{wanted!r} is {v.format}; {hint}"
            )
        return v
    order = [by_name[n] for n in device_order() if n in by_name]
    for v in order:
        if runtime_installed(v.format):
            return v
    if order:  # present, but its runtime is not installed here to pin and check it
        _runtime_distribution(order[0].format)
    raise InvalidInput(f"{mv.ref} has no TFLite or ONNX variant to package; {hint}")


def _check_out(out: Path, force: bool) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise InvalidInput(f"{out} exists and is not a folder; choose another --out")
        if any(out.iterdir()) and not force:
            raise Conflict(
                f"{out} is not empty; choose another --out or pass --force to replace it"
            )


def _image_tag(name: str, version: int) -> str:
    repo = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("._-") or "model"
    return f"{repo}:{version}"


def build_context(
    ws: Any,
    ref: str,
    out: Path | str,
    *,
    variant: str | None = None,
    force: bool = False,
    port: int = DEFAULT_PORT,
) -> PackageResult:
    """Write the build context of ``ref``'s variant to ``out`` (see the module docstring)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidInput(f"port must be 1..65535, got {port!r}")
    out = Path(out).absolute()
    _check_out(out, force)
    mv = ws.registry.get_version(ref)
    v = _choose(mv, variant)
    runtime = _runtime_distribution(v.format)
    served = load_variant(ws, mv, v)  # loads the bytes in the runtime: what is packaged works
    data = ws.artifacts.read_bytes(v.sha256)
    requirements = pinned_requirements(["numpy", runtime])
    image = _image_tag(mv.model.name, mv.version)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        files = _write_context(tmp, mv, v, data, served, runtime, requirements, port, image)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PackageResult(out, mv.ref, v.name, v.format, runtime, image, port, requirements, files)


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.old"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _dump(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _write_context(
    root: Path,
    mv: Any,
    v: Any,
    data: bytes,
    served: Any,
    runtime: str,
    requirements: list[str],
    port: int,
    image: str,
) -> list[str]:
    import edgeops_agent
    import edgeops_protocol

    from .. import __version__
    from . import standalone

    meta = v.meta
    model_dir = root / "model"
    model_dir.mkdir()
    model_file = f"model{_SUFFIX[v.format]}"
    (model_dir / model_file).write_bytes(data)
    features = meta.get("features")
    files = {
        "model": model_file,
        "labels": "labels.json",
        "features": "features.json" if features else None,
        "input_schema": "input_schema.json",
    }
    _dump(model_dir / "labels.json", served.labels)
    if features:
        _dump(model_dir / "features.json", features)
    _dump(model_dir / "input_schema.json", served.schema)
    _dump(
        model_dir / "manifest.json",
        {
            "format": MANIFEST_FORMAT,
            "model": {
                "name": mv.model.name,
                "version": mv.version,
                "ref": mv.ref,
                "variant": v.name,
                "format": v.format,
                "runtime": _FAMILY[v.format],
            },
            "artifact": {"sha256": v.sha256, "size": v.size},
            "files": files,
            "feature_names": served.schema["features"]["names"],
            "tensors": {"inputs": meta.get("inputs", []), "outputs": meta.get("outputs", [])},
            "metrics": v.metrics,
            "lineage": {
                "run": mv.run_id,
                "dataset": mv.dataset_version.ref if mv.dataset_version else None,
                "features": mv.feature_ref or None,
            },
            "made_by": f"edgeops {__version__}",
            "agent": f"edgeops-agent {edgeops_agent.__version__} (vendored)",
        },
    )
    vectors = (meta.get("test_vectors") or {}).get("inputs") or []
    if vectors:
        _dump(root / "example-request.json", {"inputs": vectors[:2]})
    source = Path(standalone.__file__).read_text(encoding="utf-8")
    header = (
        "#!/usr/bin/env python3\n"
        f"# Written by `edgeops package` (edgeops {__version__}) from edgeops/serving/"
        "standalone.py.\n"
    )
    (root / "serve.py").write_text(header + source, encoding="utf-8")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for pkg in (edgeops_agent, edgeops_protocol):
        src = Path(pkg.__file__).resolve().parent
        shutil.copytree(src, root / src.name, ignore=ignore)
    (root / "requirements.txt").write_text(
        f"# pinned by `edgeops package` to the versions it ran {mv.ref} with\n"
        + "".join(f"{r}\n" for r in requirements),
        encoding="utf-8",
    )
    (root / ".dockerignore").write_text("**/__pycache__\n**/*.pyc\n", encoding="utf-8")
    (root / "Dockerfile").write_text(_dockerfile(mv, v, port), encoding="utf-8")
    (root / "README.md").write_text(
        _readme(mv, v, runtime, port, image, bool(vectors), served.schema), encoding="utf-8"
    )
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _dockerfile(mv: Any, v: Any, port: int) -> str:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    health = (
        "import sys, urllib.request; "
        f"sys.exit(urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=4).status "
        "!= 200)"
    )
    return f"""\
# {mv.ref} variant {v.name} ({v.format}), served by serve.py; see README.md
FROM python:{python}-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY edgeops_protocol/ ./edgeops_protocol/
COPY edgeops_agent/ ./edgeops_agent/
COPY model/ ./model/
COPY serve.py ./
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin edgeops
USER 10001
EXPOSE {port}
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \\
  CMD ["python", "-c", "{health}"]
CMD ["python", "serve.py", "--host", "0.0.0.0", "--port", "{port}", "--model-dir", "model"]
"""


def _readme(
    mv: Any, v: Any, runtime: str, port: int, image: str, example: bool, schema: dict
) -> str:
    raw = schema["raw"]
    fields = (
        "\n".join(
            f"- `{f['name']}`: "
            + (
                f"a list of {f['length']} numbers (or `{f['name']}_000` .. "
                f"`{f['name']}_{f['length'] - 1:03d}`)"
                if f["kind"] == "window"
                else "a number"
                if f["kind"] == "numeric"
                else "a category (string, or null for unknown)"
            )
            for f in raw["fields"]
        )
        if raw
        else "(this model has no feature spec: send feature vectors)"
    )
    body = "@example-request.json" if example else "'{\"inputs\": [[...]]}'"
    from edgeops_agent import __version__ as agent

    return f"""\
# {mv.ref} ({v.name}) in a container

A build context written by `edgeops package`. It serves variant `{v.name}`
({v.format}, run by {runtime}) of model version `{mv.ref}` over HTTP, without
the edgeops registry: everything it needs is in this folder.

- `model/`: the model file; `manifest.json` (what it is, its SHA-256, where it
  came from); `labels.json`; `features.json` (the fitted feature transforms, if
  any); `input_schema.json`.
- `serve.py`: the server (Python's standard library HTTP server, numpy, the runtime).
- `edgeops_agent/`, `edgeops_protocol/`: the device agent's runtimes and
  feature transforms, vendored (edgeops-agent {agent}).
- `requirements.txt`: numpy and the runtime with what they need, pinned to the
  versions the model was packaged with.

## Build and run

```bash
docker build -t {image} .
docker run --rm -p {port}:{port} {image}
curl -s localhost:{port}/health
curl -s -X POST localhost:{port}/predict -H 'content-type: application/json' -d {body}
```

Without Docker: `pip install -r requirements.txt && python serve.py --port {port}`.

The container runs as an unprivileged user, listens on port {port} and has a
health check (`GET /health`).

## Requests

`POST /predict` takes `{{"inputs": [...]}}` (or `{{"input": ...}}` for one sample)
and returns `{{"model": "{mv.ref}", "variant": "{v.name}", "predictions":
[{{"label": ..., "scores": [...]}}]}}`, one score per class in the order of
`model/labels.json`. Each input is either an object of raw fields, which go
through the model's feature transforms:

{fields}

or a list of the {schema["features"]["length"]} feature values the model takes
(`model/input_schema.json` names them). Bad input gets a 422 with
`{{"error": "...", "kind": "InvalidInput"}}` naming the input and field.
`GET /schema` returns the input schema.
"""
