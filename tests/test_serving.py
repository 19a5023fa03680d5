"""Serving: the predict endpoint and `edgeops package` on pipeline-trained models.

Predictions are compared with the variant run directly (``variant_predict``,
the float model) on the same inputs transformed by the shipped feature spec;
the packaged server runs as its own process, without edgeops importable.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import store_snapshot
from edgeops.api import create_app
from edgeops.auth import Role, TokenStore
from edgeops.cli import app as cli_app
from edgeops.datasets import sensor_windows, write_table
from edgeops.pipeline import parse_pipeline
from edgeops.pipeline.check import variant_predict
from edgeops.pipeline.run import run_pipeline
from edgeops.pipeline.trainers import load_trained
from edgeops.serving import build_context, load_predictor
from edgeops.serving.standalone import load_package
from edgeops_protocol.features import FittedFeatures

AXES = ("ax", "ay", "az")
LENGTH = 32
FEATURES = {
    "name": "wrist-serve",
    "inputs": [
        *({"name": a, "kind": "window", "length": LENGTH} for a in AXES),
        {"name": "temp", "kind": "numeric"},
        {"name": "site", "kind": "categorical"},
    ],
    "steps": [
        *({"op": "window_stats", "input": a, "stats": ["mean", "std", "rms", "ptp"]} for a in AXES),
        {"op": "fft_bands", "input": "ax", "bands": 4},
        {"op": "select", "columns": ["temp"]},
        {"op": "clip", "columns": ["temp"], "quantiles": [0.01, 0.99]},
        {"op": "scale"},
        {"op": "one_hot", "column": "site"},
    ],
}
N_FEATURES = 3 * 4 + 4 + 1 + 2
LABELS = ["idle", "run", "shake", "walk"]
cli = CliRunner()


def _table(path: Path):
    frame = sensor_windows(n_per_class=50, length=LENGTH, seed=3)
    rng = np.random.default_rng(7)
    frame["temp"] = rng.normal(21.0, 2.0, len(frame)).round(2)
    frame["site"] = rng.choice(["lab", "field"], len(frame))
    write_table(frame, path)
    return frame


def _train(ws, **over):
    doc = {
        "name": "har",
        "data": "sensors@1",
        "label": "label",
        "features": "wrist-serve@1",
        "model": {"kind": "random_forest", "params": {"n_estimators": 10, "max_depth": 6}},
        "export": ["onnx-f32"],
        **over,
    }
    text = yaml.safe_dump(doc)
    result = run_pipeline(ws, parse_pipeline(yaml.safe_load(text), text))
    assert result.status == "registered", result
    return result.model_ref


def _setup(ws):
    home = ws.settings.home
    frame = _table(home / "sensors.csv")
    ws.data.add(home / "sensors.csv", "sensors")
    ws.features.add(FEATURES)
    return frame


def _rows(frame, n, lists=True):
    """Raw samples as a device gets them: windows as lists (or as ax_000.. fields)."""
    out = []
    for rec in frame.drop(columns="label").head(n).to_dict("records"):
        row = {"temp": float(rec["temp"]), "site": rec["site"]}
        for a in AXES:
            values = [float(rec[f"{a}_{i:03d}"]) for i in range(LENGTH)]
            if lists:
                row[a] = values
            else:
                row.update({f"{a}_{i:03d}": v for i, v in enumerate(values)})
        out.append(row)
    return out


def _expected(ws, ref, variant, rows):
    """Scores of the variant run directly on the rows transformed by its shipped features."""
    mv = ws.registry.get_version(ref)
    v = next(x for x in mv.variants if x.name == variant)
    X = FittedFeatures.from_dict(v.meta["features"]).transform_rows(rows)
    data = ws.artifacts.read_bytes(v.sha256)
    if variant == "original":
        return X, load_trained(v.meta["model_kind"], data, mv.params).scores(X)
    predict, close = variant_predict(v, data, X.shape[1])
    try:
        return X, np.asarray(predict(X), dtype=np.float32)
    finally:
        close()


def _check(body, expected, model, variant):
    assert (body["model"], body["variant"]) == (model, variant)
    scores = np.array([p["scores"] for p in body["predictions"]], dtype=np.float32)
    np.testing.assert_array_equal(scores, expected)
    assert [p["label"] for p in body["predictions"]] == [
        LABELS[i] for i in np.argmax(expected, axis=1)
    ]


@pytest.fixture
def har(ws):
    frame = _setup(ws)
    ref = _train(ws, alias="production")
    assert ref == "har@1"
    token, _ = TokenStore(ws.db).create("api-tests", Role.OPERATOR)
    with TestClient(create_app(ws), headers={"Authorization": f"Bearer {token}"}) as client:
        yield ws, frame, client


def test_predict_equals_the_variant_run_on_transformed_inputs(har):
    ws, frame, client = har
    rows = _rows(frame, 6)
    X, expected = _expected(ws, "har@1", "onnx-f32", rows)
    assert X.shape == (6, N_FEATURES)

    r = client.post("/api/models/har/production/predict", json={"inputs": rows})
    assert r.status_code == 200, r.text
    _check(r.json(), expected, "har@1", "onnx-f32")  # default: the device variant (ONNX)
    assert len(client.app.state.predictors) == 1

    # one sample, windows as ax_000.. fields: the same as in the batch
    one = client.post("/api/models/har/1/predict", json={"input": _rows(frame, 3, False)[2]})
    _check(one.json(), expected[2:3], "har@1", "onnx-f32")
    # already-transformed feature vectors skip the transforms
    vec = client.post("/api/models/har/latest/predict", json={"inputs": X.tolist()})
    _check(vec.json(), expected, "har@1", "onnx-f32")
    assert len(client.app.state.predictors) == 1  # one loaded model for every ref of it

    # the float model, as trained
    _, float_scores = _expected(ws, "har@1", "original", rows)
    r = client.post("/api/models/har/1/predict", json={"inputs": rows, "variant": "original"})
    _check(r.json(), float_scores, "har@1", "original")
    assert len(client.app.state.predictors) == 2

    # the library call behind the endpoint
    served = load_predictor(ws, "har@production")
    assert (served.model, served.variant, served.runtime) == ("har@1", "onnx-f32", "onnxruntime")
    assert served.schema["features"]["length"] == N_FEATURES
    assert [f["name"] for f in served.schema["raw"]["fields"]] == [*AXES, "temp", "site"]


def test_alias_move_is_served_at_once(har):
    ws, frame, client = har
    rows = _rows(frame, 4)
    url = "/api/models/har/production/predict"
    assert client.post(url, json={"inputs": rows}).json()["model"] == "har@1"
    assert _train(ws, model={"kind": "random_forest", "params": {"n_estimators": 3}}) == "har@2"
    ws.registry.set_alias("har@2", "production")
    _, expected = _expected(ws, "har@2", "onnx-f32", rows)
    _check(client.post(url, json={"inputs": rows}).json(), expected, "har@2", "onnx-f32")
    ws.registry.set_alias("har@1", "production")
    assert client.post(url, json={"inputs": rows}).json()["model"] == "har@1"


def _nan_body(row):
    bad = dict(row)
    bad["ax"] = [*row["ax"][:5], math.nan, *row["ax"][6:]]
    return json.dumps({"inputs": [bad]})  # json writes NaN, which JSON parsers may accept


def test_bad_inputs_are_422_naming_the_field(har):
    ws, frame, client = har
    row = _rows(frame, 1)[0]
    url = "/api/models/har/1/predict"
    before = store_snapshot(ws)
    cases = [
        (
            {"inputs": [{k: v for k, v in row.items() if k != "temp"}]},
            "inputs[0]: missing field 'temp': a number",
        ),
        (
            {"inputs": [row, {k: v for k, v in row.items() if k != "ay"}]},
            "inputs[1]: missing field 'ay': a list of 32 numbers (or the fields ay_000 .. ay_031)",
        ),
        (
            {"inputs": [{**row, "ax": row["ax"][:31]}]},
            "inputs[0].ax: expected a list of 32 numbers, got 31",
        ),
        (
            {"inputs": [{**row, "az": [*row["az"][:3], "x", *row["az"][4:]]}]},
            'inputs[0].az[3]: expected a number, got "x"',
        ),
        ({"inputs": [{**row, "temp": "warm"}]}, 'inputs[0].temp: expected a number, got "warm"'),
        ({"inputs": [{**row, "temp": True}]}, "inputs[0].temp: expected a number, got true"),
        (
            {"inputs": [{**row, "site": ["lab"]}]},
            'inputs[0].site: expected a category (string) or null, got ["lab"]',
        ),
        (
            {"inputs": [[0.5] * 3]},
            "inputs[0]: expected 19 feature values, got 3 (the model's features ax_mean .. "
            "site=lab)",
        ),
        (
            {"inputs": [row, [0.5] * 19]},
            "inputs[1]: inputs mix objects (raw samples) and lists (feature vectors); "
            "send one kind per request",
        ),
        (
            {"inputs": [row, 3.5]},
            "inputs[1]: expected an object with the fields ax, ay, az, temp, site, or a list "
            "of 19 feature values, got 3.5",
        ),
        ({"inputs": []}, '"inputs" must be a non-empty list of samples'),
        (
            {"inputs": [row], "input": row},
            'give exactly one of "inputs" (a list of samples) or "input" (one sample)',
        ),
        ({"rows": [row]}, "unknown request field 'rows'; allowed: input, inputs, variant"),
        ([row], 'the request body must be a JSON object: {"inputs": [...]} or {"input": {...}}'),
        (
            {"input": row, "variant": "tflite-int8"},
            "har@1 has no variant 'tflite-int8'; choose one of: onnx-f32, original",
        ),
    ]
    for body, message in cases:
        r = client.post(url, json=body)
        assert (r.status_code, r.json()) == (422, {"error": message, "kind": "InvalidInput"})
    r = client.post(url, content=_nan_body(row), headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"] == "inputs[0].ax[5]: expected a finite number, got NaN"
    r = client.post(url, content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"].startswith("the request body is not valid")
    big = client.post(url, json={"inputs": [{**row, "temp": 1e308, "ax": [1e300] * LENGTH}]})
    assert big.status_code == 422 and "is not finite (values too large?)" in big.json()["error"]

    r = client.post("/api/models/nope/1/predict", json={"input": row})
    assert r.status_code == 404 and r.json()["kind"] == "NotFound"
    r = client.post("/api/models/har/7/predict", json={"input": row})
    assert (r.status_code, r.json()["error"]) == (404, "model har has no version 7")
    r = client.post("/api/models/har/staging/predict", json={"input": row})
    assert r.status_code == 404 and "no alias 'staging'" in r.json()["error"]
    assert store_snapshot(ws) == before  # predictions write nothing
    assert "/api/models/{name}/{ref}/predict" in client.get("/openapi.json").json()["paths"]


# --- edgeops package -------------------------------------------------------------------
_BLOCK = ("edgeops", "sqlalchemy", "fastapi", "pandas", "sklearn", "tensorflow", "typer")
_RUN = """\
import runpy, sys
for name in {block!r}:
    sys.modules[name] = None  # the container has none of these
import edgeops_agent
assert edgeops_agent.__file__.startswith({ctx!r}), edgeops_agent.__file__
sys.argv = ["serve.py", "--port", "0"]
runpy.run_path("serve.py", run_name="__main__")
"""


def _http(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_package_context_serves_the_same_predictions_without_the_registry(har, tmp_path):
    ws, frame, client = har
    out = tmp_path / "ctx"
    args = ["-w", str(ws.settings.home), "package", "har@production", "--out", str(out)]
    result = cli.invoke(cli_app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["model"], info["variant"], info["runtime"], info["image"]) == (
        "har@1",
        "onnx-f32",
        "onnxruntime",
        "har:1",
    )
    for name in (
        "Dockerfile",
        "README.md",
        "requirements.txt",
        "serve.py",
        "example-request.json",
        "model/model.onnx",
        "model/manifest.json",
        "model/features.json",
        "model/labels.json",
        "model/input_schema.json",
        "edgeops_agent/serve.py",
        "edgeops_agent/runtime/onnx.py",
        "edgeops_protocol/features.py",
    ):
        assert name in info["files"], name
    assert not any("__pycache__" in f for f in info["files"])
    v = ws.registry.variant("har@1", "onnx-f32")
    assert (out / "model/model.onnx").read_bytes() == ws.artifacts.read_bytes(v.sha256)
    manifest = json.loads((out / "model/manifest.json").read_text())
    assert manifest["artifact"] == {"sha256": v.sha256, "size": v.size}
    assert manifest["model"]["ref"] == "har@1" and manifest["lineage"]["features"] == (
        "wrist-serve@1"
    )
    assert json.loads((out / "model/labels.json").read_text()) == LABELS
    assert json.loads((out / "model/features.json").read_text()) == v.meta["features"]

    reqs = [ln for ln in (out / "requirements.txt").read_text().splitlines() if ln[:1] != "#"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][^ ]*", ln) for ln in reqs), reqs
    names = {ln.split("==")[0].lower() for ln in reqs}
    assert {"numpy", "onnxruntime"} <= names
    assert not names & {"tensorflow", "tensorflow-cpu", "edgeops", "fastapi", "scikit-learn"}
    from importlib.metadata import version

    assert f"numpy=={version('numpy')}" in reqs and f"onnxruntime=={version('onnxruntime')}" in reqs
    docker = (out / "Dockerfile").read_text()
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    for line in (
        f"FROM python:{py}-slim",
        "RUN pip install --no-cache-dir -r requirements.txt",
        "USER 10001",
        "EXPOSE 8080",
        'CMD ["python", "serve.py", "--host", "0.0.0.0", "--port", "8080", "--model-dir", "model"]',
    ):
        assert line in docker.splitlines(), line
    assert "HEALTHCHECK" in docker and "/health" in docker
    assert "docker build -t har:1 ." in (out / "README.md").read_text()

    rows = _rows(frame, 5)
    api = client.post("/api/models/har/1/predict", json={"inputs": rows}).json()
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN.format(block=_BLOCK, ctx=str(out))],
        cwd=out,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+)$", line.strip())
        assert match, line + proc.stderr.read()
        base = match.group(1)
        assert _http(base + "/health") == (
            200,
            {"ok": True, "model": "har@1", "variant": "onnx-f32", "runtime": "onnxruntime"},
        )
        assert _http(base + "/predict", {"inputs": rows}) == (200, api)
        assert _http(base + "/schema") == (
            200,
            json.loads((out / "model/input_schema.json").read_text()),
        )
        example = json.loads((out / "example-request.json").read_text())
        status, body = _http(base + "/predict", example)
        assert status == 200 and len(body["predictions"]) == 2
        status, body = _http(base + "/predict", {"inputs": [{**rows[0], "temp": None}]})
        assert (status, body) == (
            422,
            {"error": "inputs[0].temp: expected a number, got null", "kind": "InvalidInput"},
        )
        status, body = _http(base + "/predict", {"input": rows[0], "variant": "original"})
        assert status == 422 and "serves har@1 variant 'onnx-f32', not 'original'" in body["error"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_package_refuses_bad_requests_and_writes_nothing(har, tmp_path):
    ws, _, _ = har
    home = str(ws.settings.home)
    out = tmp_path / "ctx"

    def run(*extra):
        return cli.invoke(cli_app, ["-w", home, "package", *extra])

    r = run("har@1", "--out", str(out), "--variant", "original")
    assert r.exit_code == 2
    assert "serves a TFLite or ONNX variant" in r.output and "choose one of: onnx-f32" in r.output
    r = run("har@1", "--out", str(out), "--variant", "onnx-int8")
    assert r.exit_code == 2 and "har@1 has no variant 'onnx-int8'" in r.output
    assert run("nope@1", "--out", str(out)).exit_code == 3
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ctx")] == []

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run("har@1", "--out", str(out))
    assert r.exit_code == 4 and "pass --force" in r.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    assert run("har@1", "--out", str(tmp_path / "file")).exit_code == 2

    result = build_context(ws, "har@production", out, force=True, port=9000)
    assert (result.out, result.variant, result.port) == (out, "onnx-f32", 9000)
    assert not (out / "keep.txt").exists() and "EXPOSE 9000" in (out / "Dockerfile").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ctx")) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_context(ws, "har@1", empty).out == empty  # an empty folder is fine


# --- a Keras model with a TFLite int8 variant --------------------------------------------
@pytest.fixture(scope="module")
def keras_ws(tmp_path_factory):
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    from edgeops import Workspace

    ws, _ = Workspace.init(tmp_path_factory.mktemp("serve-keras"))
    frame = _setup(ws)
    _train(
        ws,
        name="har-k",
        model={"kind": "keras_mlp", "params": {"hidden": [16], "epochs": 3}, "seed": 0},
        export=["tflite-int8", "onnx-f32"],
    )
    yield ws, frame
    ws.close()


def test_tflite_int8_variant_is_served_by_default_and_packaged(keras_ws, tmp_path):
    ws, frame = keras_ws
    rows = _rows(frame, 5)
    _, expected = _expected(ws, "har-k@1", "tflite-int8", rows)
    token, _ = TokenStore(ws.db).create("api-tests", Role.OPERATOR)
    with TestClient(create_app(ws), headers={"Authorization": f"Bearer {token}"}) as client:
        r = client.post("/api/models/har-k/1/predict", json={"inputs": rows})
        assert r.status_code == 200, r.text
        _check(r.json(), expected, "har-k@1", "tflite-int8")
        _, float_scores = _expected(ws, "har-k@1", "original", rows)
        r = client.post("/api/models/har-k/1/predict", json={"inputs": rows, "variant": "original"})
        _check(r.json(), float_scores, "har-k@1", "original")
        api = client.post("/api/models/har-k/1/predict", json={"inputs": rows}).json()

    result = build_context(ws, "har-k@1", tmp_path / "ctx")
    assert (result.variant, result.runtime) == ("tflite-int8", "ai-edge-litert")
    names = {r.split("==")[0].lower() for r in result.requirements}
    assert "ai-edge-litert" in names and not names & {"tensorflow", "tensorflow-cpu", "keras"}
    assert (tmp_path / "ctx/model/model.tflite").is_file()
    served = load_package(tmp_path / "ctx/model")
    assert served.respond({"inputs": rows}) == api
