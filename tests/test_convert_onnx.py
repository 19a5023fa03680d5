"""ONNX conversion (scikit-learn, Keras 3), int8 quantization, and the device's ONNX runner.

Models are trained once per module on scikit-learn's bundled digits. These tests
need the ``onnx`` and ``tensorflow`` extras and fail, not skip, without them.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from edgeops.convert.measure import labels_of
from edgeops.convert.onnx import (
    describe_onnx,
    keras_to_onnx,
    quantize_onnx_int8,
    sklearn_to_onnx,
)
from edgeops.errors import InvalidInput, MissingExtra
from edgeops_agent.runtime import RuntimeMissing, load_runner
from edgeops_agent.runtime.onnx import OnnxRunner


@pytest.fixture(scope="module")
def estimators(digits) -> dict:
    X_train, _, y_train, _ = digits
    return {
        "logreg": LogisticRegression(max_iter=1000).fit(X_train, y_train),
        "forest": RandomForestClassifier(n_estimators=10, max_depth=8, random_state=0).fit(
            X_train, y_train
        ),
        "mlp": MLPClassifier(hidden_layer_sizes=(32,), random_state=0, max_iter=300).fit(
            X_train, y_train
        ),
    }


@pytest.fixture(scope="module")
def onnx_f32(estimators) -> dict[str, bytes]:
    return {name: sklearn_to_onnx(est, 64) for name, est in estimators.items()}


@pytest.fixture(scope="module")
def keras_mlp(digits):
    import keras

    X_train, _, y_train, _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Rescaling(1.0 / 16.0),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(X_train, y_train, epochs=20, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def keras_onnx(keras_mlp) -> bytes:
    return keras_to_onnx(keras_mlp)


def accuracy(labels: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(labels == y))


# --- scikit-learn -> ONNX float32 ---------------------------------------------


@pytest.mark.parametrize("name", ["logreg", "forest", "mlp"])
def test_sklearn_onnx_matches_the_estimator(name, estimators, onnx_f32, digits):
    _, X_test, _, _ = digits
    estimator = estimators[name]
    probabilities = OnnxRunner(onnx_f32[name]).predict(X_test)
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(X_test), 10)
    assert np.array_equal(labels_of(probabilities), estimator.predict(X_test))
    np.testing.assert_allclose(probabilities, estimator.predict_proba(X_test), atol=1e-5)


def test_sklearn_onnx_is_deterministic(estimators, onnx_f32):
    assert sklearn_to_onnx(estimators["forest"], 64) == onnx_f32["forest"]


def test_describe_sklearn_classifier_picks_probabilities(onnx_f32):
    described = describe_onnx(onnx_f32["mlp"])
    assert described["runtime"] == "onnxruntime"
    assert [(t["name"], t["shape"], t["dtype"]) for t in described["inputs"]] == [
        ("input", [-1, 64], "float32")
    ]
    assert [(t["name"], t["shape"], t["dtype"]) for t in described["outputs"]] == [
        ("label", [-1], "int64"),
        ("probabilities", [-1, 10], "float32"),
    ]
    assert described["output"] == "probabilities"


def test_models_target_an_older_onnxruntime(onnx_f32, keras_onnx, digits):
    """Opset <= 17 and IR version <= 8 (onnxruntime >= 1.12), and no unused domains."""
    import onnx

    X_train, _, _, _ = digits
    quantized, _ = quantize_onnx_int8(keras_onnx, X_train)
    for model_bytes in [*onnx_f32.values(), keras_onnx, quantized]:
        model = onnx.load_from_string(model_bytes)
        opsets = {o.domain: o.version for o in model.opset_import}
        assert model.ir_version <= 8
        assert opsets[""] <= 17
        assert set(opsets) <= {"", "ai.onnx.ml"}
        assert len(opsets) == len(model.opset_import)


def test_sklearn_to_onnx_checks_the_feature_count(estimators):
    with pytest.raises(InvalidInput, match="fitted on 64 features"):
        sklearn_to_onnx(estimators["logreg"], 10)


def test_sklearn_to_onnx_names_the_missing_extra(estimators, monkeypatch):
    monkeypatch.setitem(sys.modules, "skl2onnx", None)
    with pytest.raises(MissingExtra) as caught:
        sklearn_to_onnx(estimators["logreg"], 64)
    assert (caught.value.package, caught.value.extra) == ("skl2onnx", "onnx")


# --- Keras 3 -> ONNX ------------------------------------------------------------


def test_keras_onnx_matches_keras(keras_mlp, keras_onnx, digits):
    _, X_test, _, _ = digits
    expected = keras_mlp.predict(X_test, verbose=0)
    got = OnnxRunner(keras_onnx).predict(X_test)
    assert np.mean(labels_of(got) == labels_of(expected)) >= 0.995
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_keras_onnx_has_named_input_and_output(keras_onnx):
    described = describe_onnx(keras_onnx)
    assert [(t["name"], t["shape"]) for t in described["inputs"]] == [("input", [-1, 64])]
    assert [(t["name"], t["shape"]) for t in described["outputs"]] == [("output", [-1, 10])]


# --- int8 quantization ------------------------------------------------------------


def test_keras_int8_static_qdq(keras_mlp, keras_onnx, digits):
    import onnx

    X_train, X_test, _, y_test = digits
    quantized, info = quantize_onnx_int8(keras_onnx, X_train)
    assert info["method"] == "static-qdq"
    assert info["calibration_samples"] == 300
    assert info["pre_process"] == "full"
    assert info["size_int8"] == len(quantized)
    assert info["size_ratio"] == pytest.approx(len(quantized) / len(keras_onnx))
    assert info["size_ratio"] <= 0.35
    ops = {node.op_type for node in onnx.load_from_string(quantized).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops

    reference = labels_of(keras_mlp.predict(X_test, verbose=0))
    int8_labels = labels_of(OnnxRunner(quantized).predict(X_test))
    assert np.mean(int8_labels == reference) >= 0.98
    assert accuracy(reference, y_test) - accuracy(int8_labels, y_test) <= 0.01


def test_sklearn_mlp_int8_static_qdq(estimators, onnx_f32, digits):
    X_train, X_test, _, y_test = digits
    quantized, info = quantize_onnx_int8(onnx_f32["mlp"], X_train)
    assert info["method"] == "static-qdq"
    assert info["int8_weights"] > 0
    # skl2onnx's label branch (ArgMax, ArrayFeatureExtractor, ...) stays float: 0.42 measured
    assert info["size_ratio"] <= 0.45
    reference = estimators["mlp"].predict(X_test)
    int8_labels = labels_of(OnnxRunner(quantized).predict(X_test))
    assert np.mean(int8_labels == reference) >= 0.98
    assert accuracy(reference, y_test) - accuracy(int8_labels, y_test) <= 0.01


@pytest.mark.parametrize("name", ["forest", "logreg"])
def test_int8_of_ml_operators_falls_back_to_the_float_model(name, onnx_f32, digits):
    """TreeEnsembleClassifier and LinearClassifier have no int8 kernels in onnxruntime."""
    X_train, _, _, _ = digits
    quantized, info = quantize_onnx_int8(onnx_f32[name], X_train)
    assert info["method"] == "none"
    assert info["static_error"] == "no operator in the graph was quantized"
    assert info["dynamic_error"] == "no operator in the graph was quantized"
    assert info["pre_process"] == "no-symbolic-shape"
    assert info["int8_weights"] == 0
    assert quantized == onnx_f32[name]
    assert info["size_ratio"] == 1.0


def test_int8_calibration_is_seeded(onnx_f32, digits):
    X_train, _, _, _ = digits
    first, info = quantize_onnx_int8(onnx_f32["mlp"], X_train, max_samples=40, seed=3)
    again, _ = quantize_onnx_int8(onnx_f32["mlp"], X_train, max_samples=40, seed=3)
    assert info["calibration_samples"] == 40
    assert first == again
    _, small = quantize_onnx_int8(onnx_f32["mlp"], X_train[:7], max_samples=40)
    assert small["calibration_samples"] == 7


def _matmul_reciprocal() -> bytes:
    """y = 1 / (2 x): fine in float for x != 0, infinite once int8 rounds 2x to zero."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32) * 2, "W")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["h"]),
            helper.make_node("Reciprocal", ["h"], ["output"]),
        ],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_int8_non_finite_outputs_raise_naming_the_step():
    rows = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    with pytest.raises(InvalidInput, match=r"int8 quantization \(static-qdq\) gives NaN"):
        quantize_onnx_int8(_matmul_reciprocal(), rows)
    rows[3] = 0.0
    with pytest.raises(InvalidInput, match="float model already gives NaN"):
        quantize_onnx_int8(_matmul_reciprocal(), rows)


def test_int8_refuses_bad_calibration(onnx_f32):
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        quantize_onnx_int8(onnx_f32["mlp"], np.full((5, 64), np.nan, dtype=np.float32))
    with pytest.raises(InvalidInput, match="non-empty batch"):
        quantize_onnx_int8(onnx_f32["mlp"], np.zeros((0, 64), dtype=np.float32))


# --- the device-side runner ---------------------------------------------------------


def test_runner_single_rows_and_empty_batches(onnx_f32, digits):
    _, X_test, _, _ = digits
    runner = load_runner("onnx", onnx_f32["mlp"], num_threads=2)
    assert isinstance(runner, OnnxRunner)
    assert runner.runtime == "onnxruntime"
    assert runner._session.get_session_options().intra_op_num_threads == 2
    batch = runner.predict(X_test[:5])
    rows = np.concatenate([runner.predict(X_test[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(rows, batch, atol=1e-6)
    assert runner.predict(X_test[:0]).shape == (0, 10)


def test_runner_rejects_bad_input(onnx_f32):
    runner = OnnxRunner(onnx_f32["mlp"])
    with pytest.raises(ValueError, match="expects"):
        runner.predict(np.zeros((1, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="cannot load the ONNX model"):
        OnnxRunner(b"not a model")


def test_runner_without_onnxruntime(onnx_f32, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RuntimeMissing, match="edgeops-agent\\[onnx\\]"):
        OnnxRunner(onnx_f32["mlp"])


def test_agent_runner_module_imports_nothing_heavy():
    code = (
        "import sys, edgeops_agent.runtime.onnx\n"
        "heavy = {'onnxruntime', 'onnx', 'tensorflow', 'edgeops', 'pandas', 'sqlalchemy'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
