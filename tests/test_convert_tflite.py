"""TFLite conversion (f32, int8), the device TFLite runner, and the TFLite Micro variant.

Two small models are trained once per module: an MLP on scikit-learn's digits
and a 1-D CNN on synthetic 3-channel windows. TensorFlow, ai-edge-litert and
tflite-micro are required: these tests fail, not skip, when they are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edgeops.convert.measure import labels_of, measure
from edgeops.convert.tflite import (
    TFLiteConversion,
    calibration_rows,
    describe_tflite,
    keras_to_tflite,
)
from edgeops.convert.tflm import (
    TFLMRunner,
    smallest_arena,
    tflite_to_c_array,
)
from edgeops.errors import InvalidInput
from edgeops_agent.runtime import load_runner
from edgeops_agent.runtime.tflite import TFLiteRunner, dequantize, quantize


def windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic sensor windows (n, 64, 3): one sine frequency per class, random phase/gain."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    t = np.arange(64, dtype=np.float64) / 64
    freq = np.array([2.0, 4.0, 7.0, 11.0])[y]
    phase = rng.uniform(0, 2 * np.pi, (n, 3))
    x = np.sin(2 * np.pi * freq[:, None, None] * t[None, :, None] + phase[:, None, :])
    x = x * rng.uniform(0.5, 1.5, (n, 1, 3)) + rng.normal(0.0, 1.0, (n, 64, 3))
    return x.astype(np.float32), y.astype(np.int64)


class Trained:
    """A trained Keras model, its data, and its TFLite variants."""

    def __init__(self, model: Any, x_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray):
        self.model = model
        self.x_train, self.x_test, self.y_test = x_train, x_test, y_test
        self.keras_out = np.asarray(model.predict(x_test, verbose=0))
        self.keras_labels = labels_of(self.keras_out)
        self.keras_accuracy = float(np.mean(self.keras_labels == y_test))
        self.f32 = keras_to_tflite(model, "f32")
        self.int8 = keras_to_tflite(model, "int8", representative=x_train)


@pytest.fixture(scope="module")
def mlp() -> Trained:
    import keras
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1400], order[1400:]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[train], y[train], epochs=15, batch_size=32, verbose=0)
    return Trained(model, x[train], x[test], y[test])


@pytest.fixture(scope="module")
def cnn() -> Trained:
    import keras

    x_train, y_train = windows(1600, seed=1)
    x_test, y_test = windows(400, seed=2)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64, 3)),
            keras.layers.Conv1D(16, 5, activation="relu"),
            keras.layers.MaxPooling1D(2),
            keras.layers.Conv1D(32, 3, activation="relu"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    return Trained(model, x_train, x_test, y_test)


@pytest.fixture(params=["mlp", "cnn"])
def trained(request: pytest.FixtureRequest) -> Trained:
    return request.getfixturevalue(request.param)


# -- conversion quality -----------------------------------------------------------------


def test_models_learn(trained: Trained) -> None:
    assert trained.keras_accuracy >= 0.9


def test_f32_agrees_with_keras(trained: Trained) -> None:
    runner = TFLiteRunner(trained.f32.data)
    out = runner.predict(trained.x_test)
    assert out.dtype == np.float32
    assert np.mean(labels_of(out) == trained.keras_labels) >= 0.995
    np.testing.assert_allclose(out, trained.keras_out, atol=1e-4)


def test_int8_keeps_accuracy(trained: Trained) -> None:
    runner = TFLiteRunner(trained.int8.data)
    metrics = measure(
        runner.predict,
        trained.x_test,
        trained.y_test,
        reference_labels=trained.keras_labels,
        reference_accuracy=trained.keras_accuracy,
        latency_samples=20,
    )
    assert metrics["non_finite"] == 0
    assert metrics["accuracy_delta"] >= -0.01
    assert metrics["agreement"] >= 0.98


def test_int8_is_under_a_third_of_f32_for_the_mlp(mlp: Trained) -> None:
    # Per output channel int8 adds a float scale, an int64 zero point and an int32 bias
    # (16 bytes), so a layer shrinks to about (1 + 16 / fan_in) / 4 of its f32 size.
    assert len(mlp.int8) / len(mlp.f32) <= 0.30


def test_int8_shrinks_the_small_cnn_less(cnn: Trained) -> None:
    # ~3k parameters: the graph's fixed overhead (~7 kB int8, ~5.5 kB f32) dominates;
    # measured 11448 / 17532 = 0.65.
    assert len(cnn.int8) / len(cnn.f32) <= 0.70


def test_conversion_result_records_calibration(mlp: Trained) -> None:
    assert isinstance(mlp.int8, TFLiteConversion)
    assert bytes(mlp.int8) == mlp.int8.data
    assert (mlp.int8.quantization, mlp.int8.calibration_samples) == ("int8", 300)
    assert (mlp.f32.quantization, mlp.f32.calibration_samples) == ("f32", 0)
    assert mlp.int8.data[4:8] == b"TFL3" and mlp.f32.data[4:8] == b"TFL3"


def test_calibration_rows_are_seeded_and_capped() -> None:
    data = np.arange(100, dtype=np.float32).reshape(50, 2)
    a = calibration_rows(data, max_samples=10, seed=3)
    b = calibration_rows(data, max_samples=10, seed=3)
    c = calibration_rows(data, max_samples=10, seed=4)
    assert a.shape == (10, 2) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(np.unique(a[:, 0])) == 10
    assert calibration_rows(data, max_samples=500).shape == (50, 2)


def test_int8_conversion_is_deterministic(mlp: Trained) -> None:
    again = keras_to_tflite(mlp.model, "int8", representative=mlp.x_train, max_samples=50)
    twice = keras_to_tflite(mlp.model, "int8", representative=mlp.x_train, max_samples=50)
    assert again.calibration_samples == 50
    assert again.data == twice.data


# -- tensor descriptions and the device runner --------------------------------------------


def test_int8_tensor_info(mlp: Trained) -> None:
    runner = load_runner("tflite", mlp.int8.data)
    assert runner.runtime == "ai-edge-litert"
    (inp,), (out,) = runner.inputs, runner.outputs
    assert (inp.dtype, out.dtype) == ("int8", "int8")
    assert inp.shape == (-1, 64) and out.shape == (-1, 10)
    assert inp.scale > 0 and out.scale > 0
    assert -128 <= inp.zero_point <= 127


def test_describe_tflite(mlp: Trained) -> None:
    info = describe_tflite(mlp.f32.data)
    assert info["inputs"][0]["dtype"] == "float32"
    assert info["inputs"][0]["shape"] == [-1, 64]
    assert info["inputs"][0]["scale"] == 0.0
    info8 = describe_tflite(mlp.int8.data)
    assert info8["outputs"][0]["dtype"] == "int8"
    assert info8["outputs"][0]["scale"] > 0


def test_describe_rejects_garbage() -> None:
    with pytest.raises(InvalidInput, match="TFLite"):
        describe_tflite(b"not a flatbuffer at all")


def test_runner_quantizes_with_the_input_parameters(mlp: Trained) -> None:
    runner = TFLiteRunner(mlp.int8.data)
    inp, out = runner.inputs[0], runner.outputs[0]
    x = mlp.x_test[:1]
    q = np.clip(np.round(x / inp.scale) + inp.zero_point, -128, 127).astype(np.int8)
    assert np.array_equal(quantize(x, inp.scale, inp.zero_point, "int8"), q)
    runner._interpreter.set_tensor(inp.extra["index"], q)
    runner._interpreter.invoke()
    raw = runner._interpreter.get_tensor(out.extra["index"])
    expected = (raw.astype(np.float32) - out.zero_point) * out.scale
    np.testing.assert_array_equal(runner.predict(x), expected)
    np.testing.assert_array_equal(dequantize(raw, out.scale, out.zero_point), expected)


def test_runner_single_rows_match_batches(cnn: Trained) -> None:
    runner = TFLiteRunner(cnn.int8.data)
    rows = cnn.x_test[:7]
    batch = runner.predict(rows)
    singles = np.concatenate([runner.predict(rows[i : i + 1]) for i in range(len(rows))])
    np.testing.assert_array_equal(batch, singles)
    np.testing.assert_array_equal(runner.predict(rows), batch)  # resized back and forth
    assert runner.predict(rows[:0]).shape == (0, 4)
    with pytest.raises(ValueError, match="shape"):
        runner.predict(np.zeros((2, 64), dtype=np.float32))


def test_runner_loops_rows_for_a_fixed_batch_model(mlp: Trained, tmp_path: Path) -> None:
    import tensorflow as tf
    from keras.export import ExportArchive

    archive = ExportArchive()
    archive.track(mlp.model)
    archive.add_endpoint(
        "serve", mlp.model.call, input_signature=[tf.TensorSpec([1, 64], tf.float32)]
    )
    archive.write_out(str(tmp_path / "fixed"), verbose=False)
    data = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "fixed")).convert()
    runner = TFLiteRunner(data)
    assert runner.inputs[0].shape == (1, 64)
    reference = TFLiteRunner(mlp.f32.data).predict(mlp.x_test[:5])
    np.testing.assert_allclose(runner.predict(mlp.x_test[:5]), reference, atol=1e-5)


# -- conversion errors -------------------------------------------------------------------


def test_int8_needs_representative_data(mlp: Trained) -> None:
    with pytest.raises(InvalidInput, match="representative"):
        keras_to_tflite(mlp.model, "int8")
    bad = mlp.x_train[:10].copy()
    bad[3, 5] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        keras_to_tflite(mlp.model, "int8", representative=bad)
    with pytest.raises(InvalidInput, match="expects"):
        keras_to_tflite(mlp.model, "int8", representative=np.zeros((10, 63), np.float32))
    with pytest.raises(InvalidInput, match="quantization"):
        keras_to_tflite(mlp.model, "int4")  # type: ignore[arg-type]


def test_non_finite_weights_are_refused() -> None:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    kernel, bias = model.get_weights()
    kernel[0, 0] = np.inf
    model.set_weights([kernel, bias])
    with pytest.raises(InvalidInput, match=r"input check.*NaN or inf"):
        keras_to_tflite(model, "f32")


def test_non_finite_outputs_are_refused() -> None:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: keras.ops.log(x))])
    with pytest.raises(InvalidInput, match="check outputs"):
        keras_to_tflite(model, "f32", representative=-np.ones((8, 4), np.float32))


def test_converter_failure_names_the_step(mlp: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeops.convert.tflite as module

    def broken(tf: Any, model: Any) -> Any:
        raise RuntimeError("converter exploded\nop FOO not supported")

    monkeypatch.setattr(module, "_CONVERTERS", (("fake", broken),))
    with pytest.raises(InvalidInput, match=r"step 'convert'.*op FOO not supported"):
        keras_to_tflite(mlp.model, "f32")


def test_saved_model_fallback(mlp: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    def refuse(cls: Any, model: Any) -> Any:
        raise ValueError("from_keras_model is unavailable")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", classmethod(refuse))
    conversion = keras_to_tflite(mlp.model, "f32")
    assert conversion.converter == "saved_model"
    assert mlp.f32.converter == "from_keras_model"
    out = TFLiteRunner(conversion.data).predict(mlp.x_test)
    np.testing.assert_allclose(out, mlp.keras_out, atol=1e-4)


# -- TFLite Micro --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arenas(mlp: Trained, cnn: Trained) -> dict[str, int]:
    return {
        "mlp": smallest_arena(mlp.int8.data, mlp.x_test[:4]),
        "cnn": smallest_arena(cnn.int8.data, cnn.x_test[:4]),
    }


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_tflm_agrees_with_litert(name: str, arenas: dict[str, int], request: Any) -> None:
    model: Trained = request.getfixturevalue(name)
    micro = TFLMRunner(model.int8.data, arenas[name]).predict(model.x_test)
    lite = TFLiteRunner(model.int8.data).predict(model.x_test)
    assert micro.shape == lite.shape
    assert np.mean(labels_of(micro) == labels_of(lite)) >= 0.99
    # litert's default XNNPACK delegate requantizes differently from TFLM's reference
    # kernels. Measured, in output quantization steps: the MLP differs in 1 of 3970
    # outputs by 1; the CNN in 216 of 1600, mean 0.36, max 13. Without the delegate
    # (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES) the MLP is bit-exact.
    steps = np.abs(micro - lite) / TFLiteRunner(model.int8.data).outputs[0].scale
    assert np.mean(steps) <= 1.0
    assert np.max(steps) <= 16.5


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_smallest_arena_is_tight(name: str, arenas: dict[str, int], request: Any) -> None:
    model: Trained = request.getfixturevalue(name)
    size = arenas[name]
    assert size % 16 == 0 and 1024 < size < 64 * 1024
    expected = TFLMRunner(model.int8.data, 1 << 20).predict(model.x_test[:4])
    np.testing.assert_array_equal(
        TFLMRunner(model.int8.data, size).predict(model.x_test[:4]), expected
    )
    with pytest.raises(InvalidInput, match="arena"):
        TFLMRunner(model.int8.data, size - 16).predict(model.x_test[:4])


def test_smallest_arena_survives_crashing_probes(mlp: Trained, arenas: dict[str, int]) -> None:
    # Arenas of a few hundred bytes segfault the tflite_micro interpreter; probes run apart.
    assert smallest_arena(mlp.int8.data, mlp.x_test[:2], lo=64) == arenas["mlp"]


def test_smallest_arena_reports_a_too_small_upper_bound(mlp: Trained) -> None:
    with pytest.raises(InvalidInput, match="reference run"):
        smallest_arena(mlp.int8.data, mlp.x_test[:2], lo=1024, hi=1536)


def test_tflm_runner_turns_crashes_into_errors(mlp: Trained) -> None:
    # 256 bytes cannot even hold the allocator; in-process this is a segmentation fault.
    with pytest.raises(InvalidInput, match="256-byte arena: crash"):
        TFLMRunner(mlp.int8.data, 256)


# -- the C array -------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", ["1model", "g model", "int", "__model", "_Model", ""])
def test_c_array_refuses_bad_symbols(symbol: str) -> None:
    with pytest.raises(InvalidInput):
        tflite_to_c_array(b"\x00", symbol)


MAIN_C = r"""
#include <stdint.h>
#include <stdio.h>
#include "g_digits_model.h"

int main(void) {
    unsigned long sum = 0;
    unsigned int i;
    for (i = 0; i < g_digits_model_len; ++i) {
        sum = (sum * 31u + g_digits_model[i]) % 4294967291u;
    }
    printf("%u %lu %u", g_digits_model_len, sum, (unsigned)((uintptr_t)g_digits_model % 16u));
    for (i = 0; i < 8u; ++i) {
        printf(" %02x", g_digits_model[i]);
    }
    printf("\n");
    return 0;
}
"""


def test_c_array_compiles_and_holds_the_model(mlp: Trained, tmp_path: Path) -> None:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to check the generated C"
    data = mlp.int8.data
    header, source = tflite_to_c_array(data, "g_digits_model")
    (tmp_path / "g_digits_model.h").write_text(header)
    (tmp_path / "g_digits_model.c").write_text(source)
    (tmp_path / "main.c").write_text(MAIN_C)
    flags = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
    for name in ("g_digits_model", "main"):
        subprocess.run(
            [gcc, *flags, "-c", f"{name}.c", "-o", f"{name}.o"], cwd=tmp_path, check=True
        )
    subprocess.run([gcc, "main.o", "g_digits_model.o", "-o", "check"], cwd=tmp_path, check=True)
    printed = subprocess.run(
        [str(tmp_path / "check")], capture_output=True, text=True, check=True
    ).stdout.split()

    checksum = 0
    for byte in data:
        checksum = (checksum * 31 + byte) % 4294967291
    assert printed[:3] == [str(len(data)), str(checksum), "0"]
    assert printed[3:] == [f"{b:02x}" for b in data[:8]]
    assert "#ifndef EDGEOPS_G_DIGITS_MODEL_H" in header and 'extern "C"' in header


def test_c_array_header_works_from_cpp(tmp_path: Path) -> None:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed")
    header, _ = tflite_to_c_array(b"\x01\x02", "g_model")
    (tmp_path / "g_model.h").write_text(header)
    (tmp_path / "use.cc").write_text(
        '#include "g_model.h"\nunsigned int size() { return g_model_len + g_model[0]; }\n'
    )
    subprocess.run(
        [gxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-c", "use.cc"], cwd=tmp_path, check=True
    )
