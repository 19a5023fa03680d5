"""The training pipeline on real runtimes: scikit-learn and Keras models, every variant format,
the step cache, gates and bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import yaml

from conftest import store_snapshot
from edgeops import Workspace
from edgeops.datasets import sensor_windows, write_table
from edgeops.errors import EdgeopsError, InvalidInput, MissingExtra
from edgeops.pipeline import parse_pipeline
from edgeops.pipeline.run import QuietReporter, run_pipeline
from edgeops_protocol.features import FittedFeatures

AXES = ("ax", "ay", "az")
STATS_SPEC = {
    "name": "wrist",
    "inputs": [{"name": a, "kind": "window", "length": 64} for a in AXES],
    "steps": [
        *({"op": "window_stats", "input": a} for a in AXES),
        *({"op": "fft_bands", "input": a, "bands": 4} for a in AXES),
        {"op": "scale"},
    ],
}
RAW_SPEC = {
    "name": "wrist-raw",
    "inputs": STATS_SPEC["inputs"],
    "steps": [*({"op": "window_raw", "input": a} for a in AXES), {"op": "scale"}],
}


@pytest.fixture(scope="module")
def module_ws(tmp_path_factory):
    """One SQLite workspace with sensor data and both feature sets (training is slow)."""
    home = tmp_path_factory.mktemp("pipe")
    ws, _ = Workspace.init(home)
    write_table(sensor_windows(n_per_class=120, seed=0), home / "sensors.csv")
    ws.data.add(home / "sensors.csv", "sensors")
    ws.features.add(STATS_SPEC)
    ws.features.add(RAW_SPEC)
    yield ws
    ws.close()


def _spec(**over):
    doc = {
        "name": "har",
        "data": "sensors@1",
        "label": "label",
        "features": "wrist@1",
        "model": {"kind": "random_forest", "params": {"n_estimators": 20, "max_depth": 8}},
        "export": ["onnx-f32", "c-emlearn"],
    }
    doc.update(over)
    text = yaml.safe_dump(doc)
    return parse_pipeline(yaml.safe_load(text), text)


def test_sklearn_pipeline_registers_measured_variants_and_reuses_cache(module_ws):
    ws = module_ws
    rep = QuietReporter()
    result = run_pipeline(ws, _spec(gates={"min_accuracy": 0.8, "min_agreement": 0.99}), rep)
    assert result.status == "registered" and result.model_ref == "har@1"
    assert [s[0] for s in rep.steps] == [
        "data",
        "features",
        "split",
        "train",
        "evaluate",
        "export onnx-f32",
        "export c-emlearn",
        "gates",
        "register",
    ]
    mv = ws.registry.get_version("har@1")
    variants = {v.name: v for v in mv.variants}
    assert set(variants) == {"original", "onnx-f32", "c-emlearn"}
    for name in ("onnx-f32", "c-emlearn"):
        m = variants[name].metrics
        assert m["agreement"] == 1.0  # exact for ONNX f32 and for emlearn's C
        assert m["accuracy"] == pytest.approx(mv.metrics["accuracy"])
        assert m["accuracy_delta"] == 0.0
        assert m["latency_ms_p95"] >= m["latency_ms_p50"] > 0
        assert m["size_bytes"] == variants[name].size
    meta = variants["onnx-f32"].meta
    assert meta["feature_ref"] == "wrist@1"
    assert meta["labels"] == ["idle", "run", "shake", "walk"]
    assert meta["inputs"][0]["shape"][-1] == 33
    assert len(meta["baseline"]["features"]) == 33
    assert sum(meta["baseline"]["outputs"]["class_counts"]) == meta["baseline"]["rows"] == 360
    assert len(meta["test_vectors"]["inputs"]) == 8
    assert meta["calibration"]["dataset"] == "sensors@1"

    # the fitted features shipped with the variant turn raw rows into the model's inputs
    fitted = FittedFeatures.from_dict(meta["features"])
    frame = ws.data.load_frame("sensors@1")
    X_device = fitted.transform_rows(frame.head(20).to_dict("records"))
    trained_on = ws.features.materialize(
        "wrist@1", ws.data.get("sensors@1"), frame, fit_on="split:test=0.25,seed=42,strat=True"
    )
    assert trained_on.cached  # the table the pipeline trained on
    np.testing.assert_array_equal(X_device, trained_on.X[:20])
    from edgeops_agent.runtime import load_runner

    runner = load_runner("onnx", ws.registry.variant_bytes("har@1", "onnx-f32"))
    original = ws.registry.variant_bytes("har@1")
    from edgeops.model_io import load_sklearn

    model = load_sklearn(original)
    np.testing.assert_array_equal(
        np.argmax(runner.predict(X_device), axis=1), model.predict(X_device)
    )

    run = ws.runs.get(result.run_id)
    assert run.seeds == {"split": 42, "model": 0, "calibration": 0}
    assert run.feature_ref == "wrist@1" and run.dataset_version.ref == "sensors@1"
    assert "random_forest" in run.config_text
    assert run.metrics["c-emlearn.agreement"] == 1.0

    again = QuietReporter()
    second = run_pipeline(ws, _spec(gates={"min_accuracy": 0.8, "min_agreement": 0.99}), again)
    assert (second.status, second.model_ref) == ("existing", "har@1")
    cached = {name for name, _, hit in again.steps if hit}
    assert cached == {"features", "train", "export onnx-f32", "export c-emlearn", "register"}
    assert [v.version for v in ws.registry.versions("har")] == [1]


def test_gate_failure_records_run_and_registers_nothing(module_ws):
    ws = module_ws
    before = {m["name"]: m["versions"] for m in ws.registry.models()}
    result = run_pipeline(ws, _spec(name="har-gated", gates={"min_accuracy": 0.9999}))
    assert result.status == "gated" and result.model_ref is None
    assert result.gate_failures[0].startswith("original: accuracy")
    run = ws.runs.get(result.run_id)
    assert run.status == "gated"
    assert "min_accuracy 0.9999" in run.reason
    assert {m["name"]: m["versions"] for m in ws.registry.models()} == before


def test_keras_mlp_all_variant_formats(module_ws):
    ws = module_ws
    spec = _spec(
        name="har-mlp",
        model={"kind": "keras_mlp", "params": {"hidden": [32, 16], "epochs": 25}},
        export=["tflite-f32", "tflite-int8", "c-tflm", "onnx-f32", "onnx-int8"],
        gates={"max_accuracy_drop": 0.03, "min_agreement": 0.95},
    )
    result = run_pipeline(ws, spec)
    assert result.status == "registered", result.gate_failures
    mv = ws.registry.get_version(result.model_ref)
    v = {x.name: x for x in mv.variants}
    assert v["original"].format == "keras"
    assert v["tflite-f32"].metrics["agreement"] >= 0.995
    assert v["tflite-int8"].meta["inputs"][0]["dtype"] == "int8"
    assert v["tflite-int8"].meta["inputs"][0]["scale"] > 0
    assert v["tflite-int8"].size < 0.7 * v["tflite-f32"].size
    assert v["onnx-int8"].meta["conversion"]["method"] == "static-qdq"
    assert v["onnx-int8"].size < v["onnx-f32"].size
    tflm = v["c-tflm"]
    assert tflm.metrics["arena_bytes"] > 0
    assert tflm.metrics["model_bytes"] == v["tflite-int8"].size
    assert "edgeops_model_len" in tflm.meta["c_header"]
    assert tflm.metrics["agreement"] >= 0.97
    for name in ("tflite-int8", "onnx-int8", "c-tflm"):
        assert v[name].metrics["accuracy_delta"] >= -0.03


def test_keras_cnn_on_raw_windows(module_ws):
    result = run_pipeline(
        module_ws,
        _spec(
            name="har-cnn",
            features="wrist-raw@1",
            model={"kind": "keras_cnn1d", "params": {"channels": 3, "filters": [8], "epochs": 15}},
            export=["tflite-int8"],
        ),
    )
    assert result.status == "registered"
    assert result.metrics["accuracy"] > 0.7
    assert result.variants["tflite-int8"]["agreement"] >= 0.95


def test_quantize_adds_a_variant_measured_like_the_pipeline(module_ws):
    from edgeops.pipeline.quantize import quantize_version

    ws = module_ws
    run_pipeline(ws, _spec(name="har-q", export=["onnx-f32"]))
    v = quantize_version(ws, "har-q@1", "c-emlearn")
    assert v.name == "c-emlearn" and v.metrics["agreement"] == 1.0
    assert {x.name for x in ws.registry.get_version("har-q@1").variants} == {
        "original",
        "onnx-f32",
        "c-emlearn",
    }
    with pytest.raises(InvalidInput, match="tflite-int8 needs a Keras model"):
        quantize_version(ws, "har-q@1", "tflite-int8")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": "x"}, "unknown field 'labels'"),
        ({"model": {"kind": "svm"}}, "'model.kind' is 'svm'"),
        ({"model": {"kind": "random_forest", "params": {"n_trees": 3}}}, "does not fit"),
        ({"split": {"test_size": 2}}, "'split.test_size' must be between"),
        ({"export": ["onnx-f16"]}, "unknown format 'onnx-f16'"),
        ({"export": ["tflite-int8"]}, "tflite-int8 needs a Keras model"),
        ({"label": "activity"}, "label column 'activity' is not in sensors@1"),
        ({"features": "nope@1"}, "no feature set named 'nope'"),
        (
            {"model": {"kind": "logistic_regression"}, "export": ["onnx-int8"]},
            "onnx-int8: neither static nor dynamic quantization applies",
        ),
    ],
)
def test_bad_pipelines_register_nothing(module_ws, change, message):
    ws = module_ws
    before = store_snapshot(ws)
    with pytest.raises(EdgeopsError, match=message):
        run_pipeline(ws, _spec(name="bad", **change))
    after = store_snapshot(ws)
    for table in ("models", "model_versions", "variants", "aliases", "feature_versions"):
        assert after["rows"][table] == before["rows"][table]


def test_one_class_label_and_missing_feature_column(tmp_path):
    ws, _ = Workspace.init(tmp_path / "w")
    frame = sensor_windows(n_per_class=10, seed=1)
    frame["label"] = "idle"
    write_table(frame, tmp_path / "one.csv")
    ws.data.add(tmp_path / "one.csv", "one")
    ws.features.add(STATS_SPEC)
    with pytest.raises(InvalidInput, match="has one class"):
        run_pipeline(ws, _spec(data="one@1"))
    write_table(frame.drop(columns=["az_010"]).assign(label=["a", "b"] * 20), tmp_path / "m.csv")
    ws.data.add(tmp_path / "m.csv", "missing")
    with pytest.raises(InvalidInput, match="needs column 'az_010', which missing@1 does not have"):
        run_pipeline(ws, _spec(data="missing@1"))
    assert ws.registry.models() == []
    assert [r.status for r in ws.runs.list()] == ["failed"]
    ws.close()


def test_a_kind_the_extras_cannot_train(module_ws, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(MissingExtra, match=r"pip install 'edgeops\[tensorflow\]'"):
        run_pipeline(module_ws, _spec(name="nokeras", model={"kind": "keras_mlp"}, export=[]))


def test_non_finite_variant_outputs_are_refused():
    from edgeops.pipeline.variants import Exported, variant_record

    X = np.ones((20, 3), dtype=np.float32)
    exp = Exported("onnx-f32", b"x", lambda x: np.full((len(x), 2), np.nan, dtype=np.float32))
    with pytest.raises(InvalidInput, match="onnx-f32: 40 non-finite outputs on the test split"):
        variant_record(
            exp,
            X_train=X,
            X_test=X,
            y_test=np.zeros(20, int),
            reference_labels=np.zeros(20, int),
            reference_accuracy=1.0,
            feature_names=["a", "b", "c"],
            labels=["a", "b"],
            context={},
        )


def test_check_runs_every_variant_and_fails_a_bad_one(module_ws):
    from sklearn.linear_model import LogisticRegression

    from edgeops.convert.onnx import sklearn_to_onnx
    from edgeops.pipeline.check import check_version

    ws = module_ws
    result = run_pipeline(
        ws, _spec(name="har-check", export=["onnx-f32", "c-emlearn"], gates={"min_accuracy": 0.8})
    )
    good = check_version(ws, result.model_ref)
    assert good.passed, [c for c in good.checks if not c.passed]
    subjects = {c.subject for c in good.checks}
    assert subjects == {"original", "onnx-f32", "c-emlearn"}
    reproduced = [c for c in good.checks if c.name == "accuracy reproduced (abs diff)"]
    assert all(c.value == 0.0 for c in reproduced)  # same bytes, same split: same accuracy

    # a variant that is not the model it claims to be: trained on shuffled labels
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 33)).astype(np.float32)
    wrong = LogisticRegression(max_iter=500).fit(X, rng.integers(0, 4, 200))
    ws.registry.add_variant(result.model_ref, "onnx-int8", sklearn_to_onnx(wrong, 33), "onnx")
    bad = check_version(ws, result.model_ref)
    assert not bad.passed
    failed = {(c.subject, c.name) for c in bad.checks if not c.passed}
    assert ("onnx-int8", "agreement with the original") in failed
    assert all(c.passed for c in bad.checks if c.subject != "onnx-int8")
