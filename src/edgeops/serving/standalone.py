"""Serve one model over HTTP: request checks, predictions, and a small stand-alone server.

This module is the serving core of both the edgeops API (``POST
/api/models/{name}/{ref}/predict``) and the container that ``edgeops package``
writes, where it is copied as ``serve.py``. So it imports nothing from
``edgeops``: only the standard library, numpy and the device agent's packages
(``edgeops_agent`` for the runtimes and the :class:`~edgeops_agent.serve.Predictor`,
``edgeops_protocol`` for the fitted feature transforms), which is the code a
device runs.

A request is ``{"inputs": [...]}`` or ``{"input": ...}`` (one sample), with an
optional ``"variant"``. Each input is either

* an object of **raw fields**, as a device receives them: the feature spec's
  inputs (a window ``ax`` of length ``L`` as a list of ``L`` numbers, or as the
  fields ``ax_000 .. ax_{L-1}``; numeric fields as numbers; categorical fields
  as strings, numbers or null). The model's fitted feature transforms run on
  them. Fields the spec does not name are ignored. Or
* a **feature vector**: a list of the model's input features, already
  transformed (``feature_names`` in the input schema, in that order).

One request holds one kind. Every value is checked before anything runs (a
finite JSON number where a number is expected, the right window length); an
error names the input, the field and what was expected. The response is
``{"model": "NAME@VERSION", "variant": V, "predictions": [{"label", "scores"}, ...]}``
with one score per class in the order of the model's labels.

Run as a script it serves a package folder (``model/manifest.json`` and the
files it names): ``python serve.py --host 0.0.0.0 --port 8080``. It answers
``GET /health``, ``GET /schema`` (the input schema) and ``POST /predict``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from edgeops_agent.errors import AgentError, PredictionError
from edgeops_agent.serve import MAX_ROWS, LoadedModel, Predictor
from edgeops_protocol.features import FeatureSpecError, FittedFeatures

__all__ = [
    "MANIFEST_FORMAT",
    "MAX_BODY_BYTES",
    "SCHEMA_FORMAT",
    "InputError",
    "ModelError",
    "ServedModel",
    "input_schema",
    "load_package",
    "main",
    "make_server",
    "parse_request",
]

SCHEMA_FORMAT = 1  # of the input schema document
MANIFEST_FORMAT = 1  # of a package's model/manifest.json
MAX_BODY_BYTES = 16 * 1024 * 1024
REQUEST_KEYS = ("input", "inputs", "variant")


class InputError(ValueError):
    """The request cannot be served as it is; the message says what to send instead."""


class ModelError(RuntimeError):
    """The model could not be loaded or failed on valid input."""


def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, (str, list, dict, bool)):
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):  # not JSON (a library caller passed objects)
            text = repr(value)
    else:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: expected a number, got {_show(value)}")
    try:
        out = float(value)
    except OverflowError:
        raise InputError(f"{where}: {_show(value)} is out of range for a number") from None
    if not math.isfinite(out):
        raise InputError(f"{where}: expected a finite number, got {_show(value)}")
    return out


def parse_request(body: Any) -> tuple[list[Any], str | None]:
    """``(inputs, variant)`` of a request body; :class:`InputError` when it is malformed."""
    if not isinstance(body, Mapping):
        raise InputError(
            'the request body must be a JSON object: {"inputs": [...]} or {"input": {...}}'
        )
    unknown = sorted(str(k) for k in body if k not in REQUEST_KEYS)
    if unknown:
        raise InputError(
            f"unknown request field {unknown[0]!r}; allowed: {', '.join(REQUEST_KEYS)}"
        )
    if ("inputs" in body) == ("input" in body):
        raise InputError('give exactly one of "inputs" (a list of samples) or "input" (one sample)')
    inputs = body["inputs"] if "inputs" in body else [body["input"]]
    if not isinstance(inputs, list) or not inputs:
        raise InputError('"inputs" must be a non-empty list of samples')
    if len(inputs) > MAX_ROWS:
        raise InputError(
            f'"inputs" holds {len(inputs)} samples; send at most {MAX_ROWS} per request'
        )
    variant = body.get("variant")
    if variant is not None and not isinstance(variant, str):
        raise InputError(
            f'"variant" must be a variant name such as "onnx-f32", got {_show(variant)}'
        )
    return inputs, variant


def input_schema(serving: Mapping[str, Any], n_features: int | None = None) -> dict[str, Any]:
    """What a model accepts: raw fields (from its feature spec) and its feature vector.

    ``raw`` is None when the model has neither a feature spec nor feature names:
    then only feature vectors are accepted.
    """
    names = [str(n) for n in serving.get("feature_names") or []]
    fields: list[dict[str, Any]] | None = None
    transforms = None
    if serving.get("features"):
        try:
            fitted = FittedFeatures.from_dict(serving["features"])
        except FeatureSpecError as exc:
            raise ModelError(f"the model's fitted features cannot be used: {exc}") from exc
        fields = [dict(inp) for inp in fitted.spec["inputs"]]
        names = list(fitted.feature_names)
        transforms = {"spec": fitted.spec["name"], "spec_hash": fitted.spec_hash}
    elif names:
        fields = [{"name": n, "kind": "numeric"} for n in names]
    length = len(names) if names else n_features
    if names and n_features and n_features != len(names):
        raise ModelError(
            f"the model takes {n_features} features but its metadata names {len(names)}; "
            "re-register or re-package it"
        )
    return {
        "format": SCHEMA_FORMAT,
        "raw": None if fields is None else {"fields": fields, "transforms": transforms},
        "features": {"length": length, "names": names},
    }


class ServedModel:
    """One loaded model variant: checks inputs, transforms them, runs the runtime.

    ``runner`` is anything with ``predict(float32 batch) -> scores`` (a device
    runtime from :func:`edgeops_agent.runtime.load_runner`, or a float model);
    ``serving`` holds ``labels``, ``feature_names`` and ``features`` (the fitted
    feature spec), as in a deployment manifest.
    """

    def __init__(
        self,
        runner: Any,
        serving: Mapping[str, Any],
        *,
        model: str,
        variant: str,
        n_features: int | None = None,
    ) -> None:
        self.model = model
        self.variant = variant
        self.runtime = str(getattr(runner, "runtime", "unknown"))
        if n_features is None:
            inputs = getattr(runner, "inputs", None) or []
            shape = list(getattr(inputs[0], "shape", ())) if inputs else []
            n_features = int(shape[-1]) if len(shape) >= 2 and int(shape[-1]) > 0 else None
        self.schema = input_schema(serving, n_features)
        section = {
            "labels": [str(x) for x in serving.get("labels") or []],
            "feature_names": self.schema["features"]["names"],
            "features": serving.get("features"),
        }
        manifest = {"model": {"name": model, "version": 0, "variant": variant}, "serving": section}
        try:
            loaded = LoadedModel.build(runner, manifest)
        except AgentError as exc:
            raise ModelError(f"{model}/{variant} cannot be served: {exc}") from exc
        self._features: FittedFeatures | None = loaded.features
        self._predictor = Predictor()
        self._predictor.load(loaded)

    @property
    def labels(self) -> list[str]:
        model = self._predictor.model
        return list(model.labels) if model else []

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "variant": self.variant, "runtime": self.runtime}

    def respond(self, body: Any) -> dict[str, Any]:
        """The response to a request body (see the module docstring)."""
        inputs, variant = parse_request(body)
        if variant is not None and variant != self.variant:
            raise InputError(
                f"this server serves {self.model} variant {self.variant!r}, not {variant!r}; "
                'leave out "variant" or name that one'
            )
        return self.response(inputs)

    def response(self, inputs: Sequence[Any]) -> dict[str, Any]:
        """``{"model", "variant", "predictions"}`` for checked request inputs."""
        return {"model": self.model, "variant": self.variant, "predictions": self.predict(inputs)}

    def predict(self, inputs: Sequence[Any]) -> list[dict[str, Any]]:
        """``[{"label", "scores"}, ...]`` for raw samples or feature vectors (not both)."""
        matrix = self.to_features(inputs)
        try:
            return self._predictor.predict_features(matrix)
        except PredictionError as exc:
            raise ModelError(str(exc).splitlines()[0]) from exc

    # --- input checks ---------------------------------------------------------------
    def to_features(self, inputs: Sequence[Any]) -> np.ndarray:
        """The checked ``(n, features)`` float32 matrix the model runs on."""
        if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence) or not inputs:
            raise InputError("inputs must be a non-empty list of samples")
        for i, x in enumerate(inputs):
            if not isinstance(x, (Mapping, list)):
                raise InputError(f"inputs[{i}]: expected {self._expect()}, got {_show(x)}")
        raw = [isinstance(x, Mapping) for x in inputs]
        if all(raw):
            return self._raw_matrix(inputs)
        if any(raw):
            i = raw.index(not raw[0])
            raise InputError(
                f"inputs[{i}]: inputs mix objects (raw samples) and lists (feature vectors); "
                "send one kind per request"
            )
        return self._vector_matrix(inputs)

    def _expect(self) -> str:
        n = self.schema["features"]["length"]
        vector = f"a list of {n} feature values" if n else "a list of feature values"
        if self.schema["raw"] is None:
            return vector
        names = ", ".join(f["name"] for f in self.schema["raw"]["fields"][:6])
        more = ", ..." if len(self.schema["raw"]["fields"]) > 6 else ""
        return f"an object with the fields {names}{more}, or {vector}"

    def _vector_matrix(self, inputs: Sequence[Any]) -> np.ndarray:
        n = self.schema["features"]["length"]
        rows = []
        for i, vec in enumerate(inputs):
            if not isinstance(vec, list):
                raise InputError(f"inputs[{i}]: expected {self._expect()}, got {_show(vec)}")
            want = n if n else len(rows[0]) if rows else max(len(vec), 1)
            if len(vec) != want:
                raise InputError(
                    f"inputs[{i}]: expected {want} feature values, got {len(vec)}"
                    + (f" ({self._names_hint()})" if n else "")
                )
            rows.append([_number(v, f"inputs[{i}][{j}]") for j, v in enumerate(vec)])
        matrix = np.asarray(rows, dtype=np.float32)
        bad = np.argwhere(~np.isfinite(matrix))
        if len(bad):
            i, j = (int(k) for k in bad[0])
            raise InputError(f"inputs[{i}][{j}]: {rows[i][j]:g} is out of the float32 range")
        return matrix

    def _names_hint(self) -> str:
        names = self.schema["features"]["names"]
        return f"the model's features {names[0]} .. {names[-1]}" if names else "see GET /schema"

    def _raw_matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if self.schema["raw"] is None:
            raise InputError(
                f"inputs[0]: this model has no feature spec, so it takes {self._expect()}, "
                "not objects"
            )
        fields = self.schema["raw"]["fields"]
        for i, row in enumerate(rows):
            for field in fields:
                _check_field(row, field, f"inputs[{i}]")
        if self._features is None:  # feature names only: the fields are the features, in order
            names = [f["name"] for f in fields]
            matrix = np.array([[float(r[n]) for n in names] for r in rows], dtype=np.float32)
        else:
            try:
                with np.errstate(over="ignore", invalid="ignore"):  # checked just below
                    matrix = self._features.transform_rows(rows)
            except FeatureSpecError as exc:  # e.g. an unknown category under unknown: error
                raise InputError(f"inputs: {exc}") from exc
        bad = np.argwhere(~np.isfinite(matrix))
        if len(bad):
            i, j = (int(k) for k in bad[0])
            raise InputError(
                f"inputs[{i}]: its feature {self.schema['features']['names'][j]!r} is not "
                "finite (values too large?); send values in the range the model was trained on"
            )
        return matrix


def _check_field(row: Mapping[str, Any], field: Mapping[str, Any], where: str) -> None:
    name, kind = field["name"], field["kind"]
    if kind == "window":
        length = int(field["length"])
        if name in row:
            values = row[name]
            if not isinstance(values, list):
                raise InputError(
                    f"{where}.{name}: expected a list of {length} numbers, got {_show(values)}"
                )
            if len(values) != length:
                raise InputError(
                    f"{where}.{name}: expected a list of {length} numbers, got {len(values)}"
                )
            for j, v in enumerate(values):
                _number(v, f"{where}.{name}[{j}]")
            return
        cols = [f"{name}_{k:03d}" for k in range(length)]
        missing = [c for c in cols if c not in row]
        if len(missing) == length:
            raise InputError(
                f"{where}: missing field {name!r}: a list of {length} numbers "
                f"(or the fields {cols[0]} .. {cols[-1]})"
            )
        if missing:
            raise InputError(
                f"{where}: missing field {missing[0]!r} of window {name!r} "
                f"({cols[0]} .. {cols[-1]}, {length} numbers)"
            )
        for c in cols:
            _number(row[c], f"{where}.{c}")
        return
    if name not in row:
        what = "a number" if kind == "numeric" else "a category (string)"
        raise InputError(f"{where}: missing field {name!r}: {what}")
    value = row[name]
    if kind == "numeric":
        _number(value, f"{where}.{name}")
    elif value is not None and not isinstance(value, str):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(
                f"{where}.{name}: expected a category (string) or null, got {_show(value)}"
            )
        _number(value, f"{where}.{name}")


# --- a package folder ------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc


def load_package(model_dir: Path | str) -> ServedModel:
    """The model of a package folder (``manifest.json`` and the files it names)."""
    from edgeops_agent.runtime import RuntimeMissing, load_runner

    folder = Path(model_dir)
    manifest = _read_json(folder / "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelError(
            f"{folder / 'manifest.json'} is not a format-{MANIFEST_FORMAT} package manifest; "
            "re-run edgeops package"
        )
    model, files = manifest["model"], manifest["files"]
    try:
        data = (folder / files["model"]).read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read the model file: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != manifest["artifact"]["sha256"]:
        raise ModelError(f"{files['model']} does not match its SHA-256; re-run edgeops package")
    serving = {
        "labels": _read_json(folder / files["labels"]),
        "feature_names": manifest.get("feature_names", []),
        "features": _read_json(folder / files["features"]) if files.get("features") else None,
    }
    try:
        runner = load_runner(model["format"], data)
    except (RuntimeMissing, ValueError) as exc:
        raise ModelError(str(exc)) from exc
    return ServedModel(runner, serving, model=model["ref"], variant=model["variant"])


# --- HTTP ------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, kind: str, message: str) -> None:
        self._send(status, {"error": message, "kind": kind})

    def do_GET(self) -> None:
        served = self.server.served
        if self.path == "/health":
            self._send(200, {"ok": True, **served.describe()})
        elif self.path == "/schema":
            self._send(200, served.schema)
        else:
            self._error(404, "NotFound", f"no endpoint GET {self.path[:100]}; try POST /predict")

    def do_POST(self) -> None:
        if self.path != "/predict":
            self.close_connection = True  # the body was not read
            self._error(404, "NotFound", f"no endpoint POST {self.path[:100]}; try POST /predict")
            return
        try:
            length = int(self.headers.get("Content-Length") or -1)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            status = 413 if length > MAX_BODY_BYTES else 411
            self._error(status, "InvalidInput", f"send a JSON body of at most {MAX_BODY_BYTES} B")
            return
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError as exc:
            self._error(422, "InvalidInput", f"the body is not valid JSON: {str(exc)[:80]}")
            return
        try:
            self._send(200, self.server.served.respond(body))
        except InputError as exc:
            self._error(422, "InvalidInput", str(exc))
        except ModelError as exc:
            self._error(500, "ModelError", str(exc))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    served: ServedModel
    verbose: bool = False


def make_server(served: ServedModel, host: str = "127.0.0.1", port: int = 8080) -> _Server:
    """An HTTP server for ``served`` (not started: call ``serve_forever``)."""
    server = _Server((host, port), _Handler)
    server.served = served
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an edgeops model package over HTTP.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(__file__).resolve().parent / "model",
        help="the package's model folder (default: model/ next to this file)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    try:
        served = load_package(args.model_dir)
        server = make_server(served, args.host, args.port)
    except (ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server.verbose = args.verbose

    def stop(signum: int, frame: Any) -> None:  # PID 1 in a container ignores SIGTERM otherwise
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    host, port = server.server_address[:2]
    print(f"serving {served.model} ({served.variant}, {served.runtime}) on http://{host}:{port}")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
