"""The C one-row path of TFLiteRunner (``_fastpath.RowKernel``) gives the Python path's bytes.

Real TFLite models, converted here with the product's converter (``keras_to_tflite``) and
run with ai-edge-litert, no mock of the runtime: a float32 and an int8 MLP (7 features:
the kernel quantizes four values at a time, then the rest one by one), an int8 1-D CNN
on (64, 3) windows, an int8 2-D conv net on (5, 5, 3) images (rows of four dimensions
take the kernel's general strided gather) and, for the kernel's uint8 branch, the MLP
with uint8 input and output (the product's converter makes int8 only, so that one is
its int8 settings with uint8 types). Every one-row ``runner.predict(row)`` is compared
byte for byte (``tobytes``, shape, float32) with ``_predict`` of the same row, on the
same runner and on a fresh pure-Python runner of the same model, in both of the
kernel's modes: ``pointers`` (the tensors' data addresses; the models are static
graphs) and ``copies`` (SetTensor/GetTensor; forced by making ``static_graph`` say
False).

A spy on ``TFLiteRunner._predict`` (installed before the runner is built, so the bound
method the kernel holds is the spy) tells which calls the kernel served in C and which
it handed to Python: non-finite values of integer inputs, other shapes and types, rows
while the interpreter is allocated for a batch.

Graphs that are not static (a RESHAPE whose shape is computed, a SHAPE operator, a
while loop, tf.unique) are not Keras models: they are ``tf.function`` graphs converted
by TensorFlow's converter. An output whose shape depends on the values (tf.unique)
gets no kernel at all: the kernel sizes its output beforehand.

The same kernel on tflite-runtime 2.14 with numpy 1.x (older Pis), in a venv made once
under ~/.cache: pointers mode (``static_graph`` reads the flatbuffer itself) and the
Python code's bytes.

The kernel tests fail, not skip, when ``CI`` is set and the extension did not build
(``require_native`` of test_stats_fast).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import subprocess
import sys
import warnings
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import edgeops_agent.runtime.tflite as tflite_module
from edgeops.convert.tflite import _configure_int8, calibration_rows, keras_to_tflite
from edgeops_agent._native import load_fastpath
from edgeops_agent.runtime import load_runner
from edgeops_agent.runtime.tflite import TFLiteRunner, quantize, static_graph
from test_convert_tflite import windows
from test_stats_fast import require_native

N_FEATURES = 7  # not a multiple of 4: the kernel's 4-wide quantizer and its scalar tail
GRAPH_FEATURES = 8  # the tf.function graphs reshape rows to (2, 4)
KINDS = ["mlp-f32", "mlp-int8", "cnn-int8", "conv2d-int8", "mlp-uint8"]
INT_KINDS = [k for k in KINDS if not k.endswith("f32")]
MODES = ["pointers", "copies"]


def require_kernel() -> None:
    """Skip without the C extension; fail instead in CI (test_stats_fast's rule)."""
    require_native()
    assert tflite_module._fastpath is not None  # the same loader as serve's


# --- the models ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Zoo:
    models: dict[str, bytes]  # kind -> flatbuffer
    rows: dict[str, np.ndarray]  # kind -> float32 test rows (n, *row_shape), seeded


def _uint8_variant(tf: Any, model: Any, x: np.ndarray) -> bytes:
    """The product's int8 settings with uint8 input and output types."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        _configure_int8(tf, converter, calibration_rows(x))
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
        return bytes(converter.convert())


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    keras.utils.set_random_seed(0)
    mlp = keras.Sequential(
        [
            keras.Input((N_FEATURES,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    mlp.compile("adam", "sparse_categorical_crossentropy")
    mlp.fit(x, y, epochs=2, batch_size=32, verbose=0)

    xw, yw = windows(300, seed=1)
    keras.utils.set_random_seed(0)
    cnn = keras.Sequential(
        [
            keras.Input((64, 3)),
            keras.layers.Conv1D(8, 5, activation="relu"),
            keras.layers.MaxPooling1D(2),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    cnn.compile("adam", "sparse_categorical_crossentropy")
    cnn.fit(xw, yw, epochs=2, batch_size=32, verbose=0)

    xi = rng.normal(size=(100, 5, 5, 3)).astype(np.float32)
    keras.utils.set_random_seed(0)
    conv2d = keras.Sequential(  # untrained: only the numbers of the two paths matter
        [
            keras.Input((5, 5, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),  # Flatten would compute its shape
            keras.layers.Dense(3),
        ]
    )

    models = {
        "mlp-f32": keras_to_tflite(mlp, "f32").data,
        "mlp-int8": keras_to_tflite(mlp, "int8", x).data,
        "cnn-int8": keras_to_tflite(cnn, "int8", xw).data,
        "conv2d-int8": keras_to_tflite(conv2d, "int8", xi).data,
        "mlp-uint8": _uint8_variant(tf, mlp, x),
    }
    # rows the models did not see, 1.5x wider than the training data (some get clipped)
    test_rng = np.random.default_rng(1)
    features = (1.5 * test_rng.normal(size=(64, N_FEATURES))).astype(np.float32)
    images = (1.5 * test_rng.normal(size=(64, 5, 5, 3))).astype(np.float32)
    rows = {
        "mlp-f32": features,
        "mlp-int8": features,
        "cnn-int8": 1.5 * windows(64, seed=2)[0],
        "conv2d-int8": images,
        "mlp-uint8": features,
    }
    return Zoo(models, rows)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=INT_KINDS)
def int_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def build(data: bytes, mode: str) -> TFLiteRunner:
    """A runner whose one-row path is ``mode``: 'pointers' (as the product builds it for
    a static graph), 'copies' (static_graph says False) or 'python' (no extension)."""
    if mode != "python":
        require_kernel()
    with pytest.MonkeyPatch.context() as mp:
        if mode == "copies":
            mp.setattr(tflite_module, "static_graph", lambda _data: False)
        if mode == "python":
            mp.setattr(tflite_module, "_fastpath", None)
        runner = load_runner("tflite", data)
    assert isinstance(runner, TFLiteRunner)
    return runner


def reference(data: bytes) -> TFLiteRunner:
    """A fresh pure-Python runner of the model: its own interpreter, no kernel."""
    runner = build(data, "python")
    assert runner.row_path == "python"
    return runner


@pytest.fixture
def python_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """Calls of ``TFLiteRunner._predict``, by id(runner), for runners built afterwards."""
    calls: Counter[int] = Counter()
    original = TFLiteRunner._predict

    def spy(self: TFLiteRunner, *args: Any, **kwargs: Any) -> np.ndarray:
        calls[id(self)] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TFLiteRunner, "_predict", spy)
    return calls


# --- helpers ---------------------------------------------------------------------------------


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    """The same float32 array to the bit (NaN payloads included)."""
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    assert a.dtype == np.float32 and b.dtype == np.float32
    assert a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """("ok", result) or (exception type name, message)."""
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as exc:
        return type(exc).__name__, str(exc)


def assert_same_outcome(a: tuple[str, Any], b: tuple[str, Any]) -> None:
    assert a[0] == b[0], (a, b)
    if a[0] == "ok":
        assert_same(a[1], b[1])
    else:
        assert a[1] == b[1]


def unaligned(row: np.ndarray) -> np.ndarray:
    """A copy of ``row`` whose data start one byte off float32 alignment."""
    raw = bytearray(1) + bytearray(row.tobytes())
    out = np.frombuffer(raw, dtype=np.float32, count=row.size, offset=1).reshape(row.shape)
    assert not out.flags.aligned
    return out


def layouts(rows: np.ndarray, i: int) -> dict[str, np.ndarray]:
    """Row ``i`` of ``rows`` as (1, *row_shape) float32 arrays of many memory layouts."""
    row = rows[i : i + 1]
    readonly = row.copy()
    readonly.flags.writeable = False
    out = {
        "c-contiguous": row,
        "read-only": readonly,
        "strided": np.repeat(rows, 2, axis=1)[:, ::2][i : i + 1],  # every other column
        "fortran": np.asfortranarray(rows)[i : i + 1],
        "reversed": np.ascontiguousarray(rows[:, ::-1])[:, ::-1][i : i + 1],  # negative strides
        "unaligned": unaligned(row),
        "broadcast": np.broadcast_to(row[:, :1], row.shape),  # zero strides
    }
    for name, a in out.items():
        assert a.shape == row.shape and a.dtype == np.float32, name
        if name in ("c-contiguous", "read-only"):
            assert a.flags.c_contiguous
        elif name != "unaligned":
            assert not a.flags.c_contiguous, name
        if name != "broadcast":
            assert np.array_equal(a, row), name
    return out


def in_quantization(runner: TFLiteRunner) -> tuple[float, int, str]:
    return runner._in.scale, runner._in.zero_point, runner._in.dtype


# --- 1. the converted models: static, bit-exact rows in every layout --------------------------


def test_converted_models_are_static_and_use_pointers(zoo: Zoo, kind: str) -> None:
    require_kernel()
    data = zoo.models[kind]
    assert static_graph(data) is True
    runner = build(data, "pointers")
    assert runner.row_path == "pointers"
    assert runner.predict is runner._kernel  # the C object itself is the method
    assert build(data, "copies").row_path == "copies"
    assert build(data, "python").row_path == "python"
    expected = {"f32": "float32", "int8": "int8", "uint8": "uint8"}[kind.split("-")[1]]
    assert runner._in.dtype == runner._out.dtype == expected


def test_rows_of_any_layout_are_bit_exact(
    zoo: Zoo, kind: str, mode: str, python_calls: Counter[int]
) -> None:
    data, rows = zoo.models[kind], zoo.rows[kind]
    runner, ref = build(data, mode), reference(data)
    for i in range(24):
        for name, row in layouts(rows, i).items():
            before = python_calls[id(runner)]
            got = runner.predict(row)
            assert python_calls[id(runner)] == before, f"{name}: not served in C"
            assert_same(got, ref.predict(np.ascontiguousarray(row)))
            assert_same(got, runner._predict(row))
            assert runner.row_path == mode
    assert got.shape == (1, *runner._out_row_shape)


# --- 2. quantization: ties, clipping, signed zeros -----------------------------------------


def exact_ties(scale: np.float32, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 values x with x / scale == k + 0.5 exactly in float32 (the division the
    quantizer does), for the ks where such an x exists near (k + 0.5) * scale."""
    target = (ks + 0.5).astype(np.float32)
    start = (ks + 0.5) * np.float64(scale)
    found = np.full(ks.shape, np.nan, dtype=np.float32)
    for towards in (np.float32(np.inf), np.float32(-np.inf)):
        c = start.astype(np.float32)
        for _ in range(6):
            hit = np.isnan(found) & (c / scale == target)
            found[hit] = c[hit]
            c = np.nextafter(c, towards)
    ok = ~np.isnan(found)
    return found[ok], ks[ok]


def quantization_values(scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """Exact ties over the whole range and beyond, their neighbours, the clip edges,
    values far outside, signed zeros, denormals and tiny negatives (float32)."""
    s = np.float32(scale)
    ties, ks = exact_ties(s, np.arange(-1100, 1100))
    assert len(ties) > 1000  # most ties exist; enough of them either way
    # the Python quantizer itself rounds half to even (an oracle independent of both paths)
    info = np.iinfo(dtype)
    want = np.clip(np.where(ks % 2 == 0, ks, ks + 1) + zero_point, info.min, info.max)
    assert np.array_equal(quantize(ties, scale, zero_point, dtype), want.astype(dtype))
    near = np.concatenate([np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, -np.inf)])
    lo, hi = info.min - zero_point, info.max - zero_point  # x / scale at the clip edges
    steps = np.array([lo - 1, lo - 0.5, lo, lo + 0.5, hi - 0.5, hi, hi + 0.5, hi + 1])
    big = np.array([1023.5, 1024.0, 1024.5, 1025.0, 2048.5, 1e4, 1e6])
    edges = (np.concatenate([steps, big, -big]) * np.float64(s)).astype(np.float32)
    fmax = np.finfo(np.float32).max
    far = np.array([1e4, 1e6, 1e20, 1e30, fmax, -1e4, -1e6, -1e20, -1e30, -fmax], np.float32)
    zeros = [0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, -1e-38, -1e-30, -1e-7, -1e-3]
    halves = [-0.25 * s, -0.5 * s, -0.5000001 * s, 0.5 * s, 0.4999999 * s, -1.5 * s]
    tiny = np.array([*zeros, *halves], np.float32)
    spread = np.random.default_rng(3).uniform(-300, 300, 2000).astype(np.float32) * s
    return np.concatenate([ties, near, edges, far, tiny, spread]).astype(np.float32)


def value_rows(values: np.ndarray, row_shape: tuple[int, ...], seed: int) -> np.ndarray:
    """``values`` shuffled into rows (all of them at least once; the last row topped up)."""
    size = int(np.prod(row_shape))
    n = -(-len(values) // size)
    rng = np.random.default_rng(seed)
    pool = np.concatenate([rng.permutation(values), rng.choice(values, n * size - len(values))])
    return pool.reshape(n, *row_shape)


@pytest.mark.filterwarnings("ignore:overflow encountered in divide:RuntimeWarning")
def test_quantization_ties_clipping_and_zeros(
    zoo: Zoo, int_kind: str, mode: str, python_calls: Counter[int]
) -> None:
    """The kernel quantizes exactly as ``quantize``.

    Two checks per row. (a) The input tensor itself after the kernel's call: TFLite keeps
    a graph's input tensors (they are not reused by the arena), which is checked first
    with the Python path (set_tensor of ``quantize(row)``, Invoke, get_tensor gives it
    back); so after ``runner.predict(row)`` the tensor holds what the kernel wrote, and a
    one-step difference in a single value shows, where the model's outputs could hide
    it. (b) The outputs, byte for byte, against a fresh pure-Python runner.
    """
    data = zoo.models[int_kind]
    runner, ref = build(data, mode), reference(data)
    scale, zero_point, dtype = in_quantization(runner)
    row_shape = runner._row_shape
    read_input = runner._interpreter.get_tensor

    probe = zoo.rows[int_kind][:1] * np.float32(3.0)
    runner._predict(probe)
    assert np.array_equal(read_input(runner._in_index), quantize(probe, scale, zero_point, dtype))

    rows = value_rows(quantization_values(scale, zero_point, dtype), row_shape, seed=4)
    assert len(rows) >= 40  # ~1,100 rows of the MLPs, ~45 windows of the CNN
    mismatched = []
    for i in range(len(rows)):
        row = rows[i : i + 1]
        before = python_calls[id(runner)]
        got = runner.predict(row)
        assert python_calls[id(runner)] == before  # finite: served in C
        written = read_input(runner._in_index)
        wanted = quantize(row, scale, zero_point, dtype)
        if not np.array_equal(written, wanted):
            bad = np.flatnonzero(written != wanted)[:5]
            mismatched.append([(row.flat[j], written.flat[j], wanted.flat[j]) for j in bad])
        assert_same(got, ref.predict(row))
    assert runner.row_path == mode
    assert not mismatched, mismatched[:5]


# --- 3. non-finite values --------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_non_finite_rows(zoo: Zoo, kind: str, mode: str, python_calls: Counter[int]) -> None:
    """NaN and inf: an integer input hands the row to Python, a float32 one runs it in C;
    the bytes are the Python path's either way (NaN payloads compared too)."""
    data, rows = zoo.models[kind], zoo.rows[kind]
    runner, ref = build(data, mode), reference(data)
    integer = runner._in.dtype != "float32"
    rng = np.random.default_rng(5)
    for i in range(30):
        row = rows[i : i + 1].copy()
        flat = row.reshape(-1)
        for value in (np.nan, np.inf, -np.inf)[: 1 + i % 3]:
            flat[rng.integers(0, flat.size)] = value
        if i % 5 == 0:
            flat[:] = np.nan
        for name, view in (("c", row), ("strided", np.repeat(row, 2, axis=1)[:, ::2])):
            before = python_calls[id(runner)]
            got = runner.predict(view)
            assert python_calls[id(runner)] == before + (1 if integer else 0), name
            assert_same(got, ref.predict(row))
            assert_same(got, runner._predict(row))
        # the kernel did not leave anything behind: a finite row right after is exact
        assert_same(runner.predict(rows[i + 1 : i + 2]), ref.predict(rows[i + 1 : i + 2]))
    assert runner.row_path == mode


# --- 4. batches and rows alternating ---------------------------------------------------------


def test_batches_and_rows_alternate(
    zoo: Zoo, kind: str, mode: str, python_calls: Counter[int]
) -> None:
    """A batch resizes the interpreter (the kernel is off: 'python'); the next row goes
    to Python, which allocates for one row again (the kernel is back), the one after is
    C. A batch of 1,025 ends allocated for its last chunk of one row."""
    data, rows = zoo.models[kind], zoo.rows[kind]
    runner, ref = build(data, mode), reference(data)
    rng = np.random.default_rng(6)
    big = rows[rng.integers(0, len(rows), 1025)]
    steps = [1, 10, 1, 1, 3, 1, 1025, 1, 0, 1, 2, 2, 1, 1, 10, 1]
    allocated = 1
    for n, size in enumerate(steps):
        x = big[n : n + size] if size < 1025 else big
        before = python_calls[id(runner)]
        got = runner.predict(x)
        via_python = python_calls[id(runner)] - before
        assert via_python == (0 if size == 1 and allocated == 1 else 1), (n, size)
        assert_same(got, ref.predict(x))  # same batch sizes, in the same order
        if size > 0:
            allocated = size % 1024 or 1024
        assert runner.row_path == (mode if allocated == 1 else "python"), (n, size)


def test_fixed_batch_of_one_keeps_the_kernel_on(python_calls: Counter[int]) -> None:
    """A model with a fixed batch of 1 runs batches row by row in Python, never resized:
    the kernel stays on throughout."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((N_FEATURES,), batch_size=1), keras.layers.Dense(3, activation="softmax")]
    )
    data = keras_to_tflite(model, "f32").data
    runner, ref = build(data, "pointers"), reference(data)
    assert not runner._resizable
    x = np.random.default_rng(7).normal(size=(20, N_FEATURES)).astype(np.float32)
    for size in (1, 5, 1, 20, 1):
        before = python_calls[id(runner)]
        assert_same(runner.predict(x[:size]), ref.predict(x[:size]))
        assert python_calls[id(runner)] - before == (0 if size == 1 else 1)
        assert runner.row_path == "pointers"


# --- 5. other shapes and types go to Python ---------------------------------------------------


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_other_shapes_and_types_go_to_python(
    zoo: Zoo, kind: str, python_calls: Counter[int]
) -> None:
    """Same results, or the same exception type and message, as ``_predict``. A 1-D row
    (no batch axis) is refused by ``_predict`` (ValueError), and so by the runner."""
    data, rows = zoo.models[kind], zoo.rows[kind]
    runner, ref = build(data, "pointers"), reference(data)
    row = rows[:1]
    wider = np.concatenate([row, row[:, :1]], axis=1)  # (1, n + 1, ...)
    cases: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
        "1-d row": ((row.reshape(-1),), {}),
        "row without batch axis": ((row[0],), {}),
        "one more column": ((wider,), {}),
        "one value less": ((row.reshape(-1)[:-1][None],), {}),
        "scalar": ((np.float32(1.0),), {}),
        "0-d array": ((np.array(1.0, np.float32),), {}),
        "two rows": ((rows[:2],), {}),
        "no rows": ((rows[:0],), {}),
        "float64": ((row.astype(np.float64),), {}),
        "float16": ((row.astype(np.float16),), {}),
        "int64": ((np.round(row * 10).astype(np.int64),), {}),
        "int8": ((np.round(row * 10).astype(np.int8),), {}),
        "big-endian float32": ((row.astype(">f4"),), {}),
        "nested list": ((row.tolist(),), {}),
        "matrix subclass": ((np.asmatrix(row.reshape(1, -1)),), {}),
        "keyword": ((), {"x": row}),
        "no argument": ((), {}),
        "two arguments": ((row, row), {}),
        "unknown keyword": ((row,), {"y": 1}),
    }
    for name, (args, kwargs) in cases.items():
        before = python_calls[id(runner)]
        got = outcome(runner.predict, *args, **kwargs)
        assert python_calls[id(runner)] == before + 1, name
        assert_same_outcome(got, outcome(runner._predict, *args, **kwargs))
        pure = outcome(ref.predict, *args, **kwargs)
        if name in ("no argument", "two arguments", "unknown keyword"):
            # the message names the method called: _predict (the kernel's) or predict
            assert got[0] == pure[0] == "TypeError", name
            assert "_predict()" in got[1] and got[1] == pure[1].replace("predict()", "_predict()")
        else:
            assert_same_outcome(got, pure)
        assert runner.row_path == ("pointers" if name != "two rows" else "python")
        if name == "two rows":
            runner.predict(row)  # back to one row (via Python)
    assert outcome(runner.predict, row.reshape(-1))[0] == "ValueError"
    assert_same(runner.predict(row), ref.predict(row))


# --- 6. static_graph --------------------------------------------------------------------------


def _operators(data: bytes) -> list[str]:
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    out = []
    for i in range(graph.OperatorsLength()):
        code = model.OperatorCodes(graph.Operators(i).OpcodeIndex())
        out.append(names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])
    return out


@pytest.fixture(scope="module")
def graphs() -> dict[str, bytes]:
    """tf.function graphs on (None, 8) float32 rows, converted by TensorFlow's converter."""
    import tensorflow as tf

    spec = [tf.TensorSpec([None, GRAPH_FEATURES], tf.float32)]

    @tf.function(input_signature=spec)
    def shape_reshape(v: Any) -> Any:  # SHAPE -> PACK -> RESHAPE: SHAPE is not whitelisted
        return tf.reshape(v * 2.0, tf.stack([tf.shape(v)[0], 2, 4]))

    @tf.function(input_signature=spec)
    def while_loop(v: Any) -> Any:  # a WHILE operator: three subgraphs
        def more(i: Any, w: Any) -> Any:
            return tf.logical_and(tf.reduce_max(w) > 3.0, i < 20)

        return tf.while_loop(more, lambda i, w: (i + 1, w * 0.5 + 1.0), (tf.constant(0), v))[1]

    def computed(v: Any) -> Any:  # -1, computed from the values (the converter cannot fold it)
        return tf.cast(tf.reduce_max(v, axis=1) * 0.0, tf.int32) - 1

    @tf.function(input_signature=spec)
    def dynamic_reshape(v: Any) -> Any:  # only whitelisted operators, RESHAPE's shape computed
        return tf.reshape(v * 2.0, tf.concat([computed(v), tf.constant([2, 4])], 0))

    @tf.function(input_signature=spec)
    def dynamic_scalar(v: Any) -> Any:  # the same, one output value per row: (1, 1)
        total = tf.reduce_sum(v, axis=1, keepdims=True) * 2.0
        return tf.reshape(total, tf.concat([computed(v), tf.constant([1])], 0))

    @tf.function(input_signature=spec)
    def unique(v: Any) -> Any:  # the distinct values: as many outputs as there are
        return tf.unique(tf.reshape(v, [-1])).y

    functions = {
        "shape_reshape": shape_reshape,
        "while_loop": while_loop,
        "dynamic_reshape": dynamic_reshape,
        "dynamic_scalar": dynamic_scalar,
        "unique": unique,
    }
    out = {}
    for name, fn in functions.items():
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [fn.get_concrete_function()], fn
        )
        out[name] = bytes(converter.convert())
    return out


def graph_rows(n: int, seed: int) -> np.ndarray:
    return (4.0 * np.random.default_rng(seed).normal(size=(n, GRAPH_FEATURES))).astype(np.float32)


def test_static_graph_is_false_when_in_doubt(graphs: dict[str, bytes]) -> None:
    rng = np.random.default_rng(8)
    garbage = [b"", b"TFL3", b"not a model" * 10, *(rng.bytes(n) for n in (8, 64, 4096))]
    for blob in garbage:
        assert static_graph(blob) is False
    # the dynamic reshape has only whitelisted operators (with constant axes), apart from
    # the RESHAPE whose shape input is computed: it is that check that says False
    ops = _operators(graphs["dynamic_reshape"])
    assert "RESHAPE" in ops
    assert set(ops) <= set(tflite_module._STATIC_OPS) | set(tflite_module._CONST_INPUTS)
    assert "SHAPE" in _operators(graphs["shape_reshape"])
    for name, data in graphs.items():
        assert static_graph(data) is False, name


def test_static_graph_reads_the_flatbuffer_as_the_schema_module_does(
    zoo: Zoo, graphs: dict[str, bytes]
) -> None:
    """static_graph has its own flatbuffer reader (tflite-runtime ships no schema
    module): its operator numbers are the schema's, and it decides as a reading with
    the schema module does, for every model here."""
    from ai_edge_litert import schema_py_generated as schema

    for name, code in tflite_module._STATIC_OPS.items():
        assert getattr(schema.BuiltinOperator, name) == code, name
    for name, (code, _) in tflite_module._CONST_INPUTS.items():
        assert getattr(schema.BuiltinOperator, name) == code, name

    def by_schema(data: bytes) -> bool:
        model = schema.Model.GetRootAs(data, 0)
        graph = model.Subgraphs(0)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            c = model.OperatorCodes(op.OpcodeIndex())
            code = max(c.BuiltinCode(), c.DeprecatedBuiltinCode())
            if code in tflite_module._STATIC_CODES:
                continue
            if code not in tflite_module._CONST_CODES:
                return False
            for k in tflite_module._CONST_CODES[code]:
                tensor = op.Inputs(k)
                if tensor >= 0 and model.Buffers(graph.Tensors(tensor).Buffer()).DataLength() == 0:
                    return False
        return model.SubgraphsLength() == 1

    every = {**zoo.models, **graphs}
    assert sum(static_graph(d) for d in every.values()) == len(zoo.models) > 0
    for name, data in every.items():
        assert static_graph(data) is by_schema(data), name
    data = zoo.models["mlp-int8"]  # cut anywhere: False, never an exception
    assert all(static_graph(data[:n]) is False for n in range(0, len(data) - 1, 97))


@pytest.mark.parametrize("name", ["shape_reshape", "while_loop"])
def test_graphs_that_are_not_static_use_the_copies(
    graphs: dict[str, bytes], name: str, python_calls: Counter[int]
) -> None:
    data = graphs[name]
    runner, ref = build(data, "pointers"), reference(data)
    assert runner.row_path == "copies"
    rows = graph_rows(24, seed=9)
    for i in range(len(rows)):
        for row in layouts(rows, i).values():
            before = python_calls[id(runner)]
            got = runner.predict(row)
            assert python_calls[id(runner)] == before
            assert_same(got, ref.predict(np.ascontiguousarray(row)))
            assert_same(got, runner._predict(row))
    assert runner.row_path == "copies"


@pytest.mark.parametrize("name", ["dynamic_reshape", "dynamic_scalar"])
def test_dynamic_output_tensors(graphs: dict[str, bytes], name: str) -> None:
    """An output tensor whose shape is only known after Invoke (() at allocation, so the
    kernel's (1,)): the runner's first-row check sees the kernel disagree with Python
    (a ValueError, or shape (1,) for (1, 1)) and keeps Python."""
    data = graphs[name]
    runner, ref = build(data, "pointers"), reference(data)
    assert runner.row_path != "pointers"
    for i, row in enumerate(graph_rows(8, seed=10)):
        got = runner.predict(row[None])
        assert_same(got, ref.predict(row[None]))
        assert got.shape == ((1, 2, 4) if name == "dynamic_reshape" else (1, 1)), i


def test_output_shape_that_depends_on_the_values(graphs: dict[str, bytes]) -> None:
    data = graphs["unique"]
    runner, ref = build(data, "pointers"), reference(data)
    # an output whose shape is known only once the model ran: no kernel (it sizes its
    # output beforehand); this model once passed the zeros check below and then failed
    assert runner.row_path == "python"
    zeros = np.zeros((1, GRAPH_FEATURES), np.float32)
    assert_same(runner.predict(zeros), ref.predict(zeros))  # shape (1,): [0.]
    row = np.arange(GRAPH_FEATURES, dtype=np.float32)[None]
    assert ref.predict(row).shape == (GRAPH_FEATURES,)
    assert_same(runner.predict(row), ref.predict(row))


# --- 7. copies forced on a static graph (also the ``mode`` parameter of the tests above) -----


def test_copies_are_forced_by_static_graph(zoo: Zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    require_kernel()
    monkeypatch.setattr(tflite_module, "static_graph", lambda _data: False)
    runner = load_runner("tflite", zoo.models["cnn-int8"])
    assert runner.row_path == "copies"
    row = zoo.rows["cnn-int8"][:1]
    assert_same(runner.predict(row), reference(zoo.models["cnn-int8"]).predict(row))


# --- results handed out are the caller's ------------------------------------------------------


def test_results_kept_by_the_caller_are_not_overwritten(zoo: Zoo, kind: str, mode: str) -> None:
    """Results the caller keeps (the array, a view of it, a memoryview, a buffer of a
    read-only one) stay as they were, whatever the kernel does with the arrays nobody
    holds any more; and after the runner is gone."""
    data, rows = zoo.models[kind], zoo.rows[kind]
    runner, ref = build(data, mode), reference(data)
    expected = [ref.predict(rows[i : i + 1]) for i in range(len(rows))]
    kept: list[tuple[int, Any]] = []
    for i in range(len(rows)):
        out = runner.predict(rows[i : i + 1])
        assert_same(out, expected[i])
        if i % 4 == 0:
            kept.append((i, out))
        elif i % 4 == 1:
            kept.append((i, out[0]))  # a view: keeps its base alive
        elif i % 4 == 2:
            kept.append((i, memoryview(out)))
        else:
            out.flags.writeable = False
            kept.append((i, np.frombuffer(out, dtype=np.float32)))
        del out
        for k, held in kept:
            assert np.asarray(held).tobytes() == expected[k].tobytes(), (i, k)
    # the runner, its kernel and the kernel's bound _predict are a cycle: collected
    weak = weakref.ref(runner)
    del runner
    gc.collect()
    assert weak() is None
    for k, held in kept:
        assert np.asarray(held).tobytes() == expected[k].tobytes(), k


# --- 8. the pointers are checked again every 1,024 calls --------------------------------------


@dataclass
class AddressSpy:
    """What ``TFLiteRunner._tensor_addresses`` returned, for runners built afterwards."""

    seen: list[tuple[int, int]] = field(default_factory=list)
    shift_at: int = -1  # the call (index in seen) whose input address is reported moved


@pytest.fixture
def addresses(monkeypatch: pytest.MonkeyPatch) -> AddressSpy:
    state = AddressSpy()
    original = TFLiteRunner._tensor_addresses

    def spy(self: TFLiteRunner) -> tuple[int, int]:
        address_in, address_out = original(self)
        if len(state.seen) == state.shift_at:
            address_in += 4096  # never used by the kernel: compared, found moved
        state.seen.append((address_in, address_out))
        return address_in, address_out

    monkeypatch.setattr(TFLiteRunner, "_tensor_addresses", spy)
    return state


def fresh_allocation(runner: TFLiteRunner, rows: np.ndarray) -> None:
    """A batch, then a row (Python, allocating for one row again): the kernel is
    configured anew, its call count is zero."""
    runner.predict(rows[:2])
    assert runner.row_path == "python"
    runner.predict(rows[:1])


def test_pointers_are_rechecked(zoo: Zoo, kind: str, addresses: AddressSpy) -> None:
    data, rows = zoo.models[kind], zoo.rows[kind]
    runner, ref = build(data, "pointers"), reference(data)
    expected = [ref.predict(rows[i : i + 1]) for i in range(len(rows))]
    fresh_allocation(runner, rows)
    assert runner.row_path == "pointers"
    read = len(addresses.seen)  # at construction, and at the last allocation
    fortran = np.asfortranarray(rows)
    for call in range(1, 2 * 1024 + 11):
        i = (call * 7) % len(rows)
        row = rows[i : i + 1] if call % 3 else fortran[i : i + 1]
        assert_same(runner.predict(row), expected[i])
        assert len(addresses.seen) == read + call // 1024, call
    assert runner.row_path == "pointers"
    assert len(set(addresses.seen[read - 1 :])) == 1  # not moved since the allocation


def test_moved_pointers_fall_back_to_copies(zoo: Zoo, addresses: AddressSpy) -> None:
    """If the recheck sees other addresses, the kernel goes to the copies."""
    data, rows = zoo.models["cnn-int8"], zoo.rows["cnn-int8"]
    runner, ref = build(data, "pointers"), reference(data)
    expected = [ref.predict(rows[i : i + 1]) for i in range(len(rows))]
    fresh_allocation(runner, rows)
    addresses.shift_at = len(addresses.seen)  # the next read: the recheck
    for call in range(1, 1024 + 200):
        i = call % len(rows)
        assert_same(runner.predict(rows[i : i + 1]), expected[i])
        assert runner.row_path == ("pointers" if call < 1024 else "copies"), call
    assert len(addresses.seen) == addresses.shift_at + 1
    # allocated again: the (true) addresses are read again and used
    fresh_allocation(runner, rows)
    assert runner.row_path == "pointers"
    assert len(addresses.seen) == addresses.shift_at + 2
    for i in range(len(rows)):
        assert_same(runner.predict(rows[i : i + 1]), expected[i])


# --- 9. the pure-Python path -----------------------------------------------------------------


def test_without_the_extension(zoo: Zoo, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data, rows = zoo.models[kind], zoo.rows[kind]
    monkeypatch.setattr(tflite_module, "_fastpath", None)
    runner = load_runner("tflite", data)
    assert runner.row_path == "python"
    assert runner._kernel is None
    assert runner.predict.__func__ is TFLiteRunner.predict  # type: ignore[attr-defined]
    monkeypatch.undo()
    if tflite_module._fastpath is None:
        return
    fast = build(data, "pointers")
    for i in range(16):
        row = rows[i : i + 1]
        assert_same(runner.predict(row), fast.predict(row))
    assert_same(runner.predict(rows), fast.predict(rows))


def test_pure_python_from_the_environment(
    zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEOPS_PURE_PYTHON", "1")
    assert load_fastpath() is None
    monkeypatch.delenv("EDGEOPS_PURE_PYTHON")
    if tflite_module._fastpath is not None:
        assert load_fastpath() is tflite_module._fastpath
    path = tmp_path / "m.tflite"
    path.write_bytes(zoo.models["mlp-int8"])
    code = (
        "import sys; from edgeops_agent.runtime import load_runner; "
        "print(load_runner('tflite', open(sys.argv[1], 'rb').read()).row_path)"
    )
    env = {**os.environ, "EDGEOPS_PURE_PYTHON": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "python"


# --- tflite-runtime (older Pis: numpy < 2) ------------------------------------------------

TFLITE_RUNTIME = "tflite-runtime==2.14.0"
_ON_TFLITE_RUNTIME = """
import json, sys
import numpy as np
import edgeops_agent.runtime.tflite as t
report = {"numpy": np.__version__, "native": t._fastpath is not None, "models": {}}
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    rows = np.load(path + ".npy")
    runner = t.TFLiteRunner(data)
    path_before = runner.row_path
    same = [
        runner.predict(rows[i : i + 1]).tobytes() == runner._predict(rows[i : i + 1]).tobytes()
        for i in range(len(rows))
    ]
    batch = runner.predict(rows)  # the batch path, then one row again
    again = runner.predict(rows[:1]).tobytes() == runner._predict(rows[:1]).tobytes()
    report["models"][path] = {
        "runtime": runner.runtime, "row_path": path_before, "static": t.static_graph(data),
        "same": all(same), "rows": len(same), "batch": list(batch.shape), "again": again,
        "row_path_after": runner.row_path,
    }
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def tflite_runtime_python() -> Path:
    """A venv with tflite-runtime and numpy < 2 (what older Raspberry Pi OS images run),
    made once per machine under ~/.cache; the agent's source (and its C extensions,
    built for this Python) come from PYTHONPATH. Fails instead of skipping in CI."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    venv = base / "edgeops-tests" / f"tflite-runtime-2.14-{py}"
    python = venv / "bin" / "python"
    if not (venv / "ready").exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                           capture_output=True, timeout=300)  # fmt: skip
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "numpy<2", TFLITE_RUNTIME],
                check=True, capture_output=True, timeout=600,
            )  # fmt: skip
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            message = f"cannot make a {TFLITE_RUNTIME} venv: {exc} {detail[-500:]!r}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        (venv / "ready").write_text(TFLITE_RUNTIME + "\n")
    return python


def test_the_kernel_on_tflite_runtime_with_numpy_1(
    zoo: Zoo, tflite_runtime_python: Path, tmp_path: Path
) -> None:
    """The same C path on tflite-runtime 2.14 with numpy 1.x: the extension's numpy mirror
    holds, static graphs use the tensors' addresses (static_graph needs no schema module),
    and every row gives the Python code's bytes."""
    require_kernel()
    paths = []
    for kind in ("mlp-f32", "mlp-int8", "cnn-int8"):
        path = tmp_path / f"{kind}.tflite"
        path.write_bytes(zoo.models[kind])
        np.save(str(path) + ".npy", zoo.rows[kind][:64])
        paths.append(str(path))
    src = Path(tflite_module.__file__).resolve().parents[2]  # device_agent/src
    env = {**os.environ, "PYTHONPATH": str(src), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("EDGEOPS_PURE_PYTHON", None)
    done = subprocess.run(
        [str(tflite_runtime_python), "-c", _ON_TFLITE_RUNTIME, *paths],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["numpy"].startswith("1.") and report["native"] is True
    for path in paths:
        got = report["models"][path]
        assert got["runtime"] == "tflite-runtime", got
        assert got["static"] is True and got["row_path"] == "pointers", got
        assert got["same"] is True and got["rows"] == 64 and got["again"] is True, got
        assert got["batch"][0] == 64 and got["row_path_after"] == "pointers", got
