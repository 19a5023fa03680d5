"""The fast statistics paths count exactly what the plain accumulator they replaced counted.

``RefWindowStats`` below is the protocol's ``WindowStats`` as it was before updates were
buffered a block at a time and binned with whole-block numpy calls (one numpy call per
feature per 64 rows, argmax per row). Random sequences of ``update``, ``update_many``,
errors, non-finite values, odd output shapes and window closes must give the same
window JSON, to the last bit of the latency sum, with both implementations: the C
accumulator (``NativeWindowStats``) and the numpy one (``PyWindowStats``). Then the
agent's path (Predictor and Telemetry, with and without the C one-row path) must give
the windows, results and listener calls the old code gave.

The C tests fail, not skip, when ``CI`` is set and the extensions did not build
(unless ``EDGEOPS_PURE_PYTHON=1`` asks for the Python code).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgeops_agent.serve as serve_module
import edgeops_agent.telemetry as telemetry_module
from edgeops_agent.errors import PredictionError
from edgeops_agent.runtime.base import TensorInfo
from edgeops_agent.serve import LoadedModel, Predictor
from edgeops_agent.telemetry import Telemetry, window_baseline
from edgeops_protocol.baseline import CONFIDENCE_EDGES, labels_of
from edgeops_protocol.histogram import bin_index
from edgeops_protocol.messages import parse_telemetry, telemetry_message
from edgeops_protocol.stats import (
    LATENCY_EDGES_MS,
    STATS_FORMAT,
    NativeWindowStats,
    PyWindowStats,
)

SRC = Path(__file__).resolve().parents[1] / "device_agent" / "src"


def require_native() -> None:
    """Skip without the C extensions; fail instead in CI (they must build there)."""
    if NativeWindowStats is not None and serve_module._fastpath is not None:
        return
    forced = os.environ.get("EDGEOPS_PURE_PYTHON", "") not in ("", "0")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and not forced:
        pytest.fail("the C extensions did not build: pip install -e ./device_agent with gcc")
    pytest.skip("the C extensions are not built (or EDGEOPS_PURE_PYTHON is set)")


@pytest.fixture(params=["native", "python"])
def impl(request) -> Any:
    """The WindowStats class under test."""
    if request.param == "native":
        require_native()
        return NativeWindowStats
    return PyWindowStats


# --- the oracle: WindowStats as it was (edgeops_protocol/stats.py before the fast path) ----

_REF_BLOCK = 64


def _ref_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    return np.bincount(bin_index(finite, edges), minlength=edges.size + 1)


class RefWindowStats:
    def __init__(self, baseline: Mapping[str, Any]) -> None:
        feats = baseline.get("features", [])
        self.names = [str(f["name"]) for f in feats]
        self.edges = [np.asarray(f["edges"], dtype=np.float64) for f in feats]
        outputs = baseline.get("outputs", {})
        self.labels = [str(x) for x in outputs.get("labels", [])]
        self.conf_edges = np.asarray(outputs.get("confidence_edges", CONFIDENCE_EDGES))
        self.lat_edges = np.asarray(LATENCY_EDGES_MS)
        self._x = np.empty((_REF_BLOCK, len(self.edges)), dtype=np.float64)
        self._lat = np.empty(_REF_BLOCK, dtype=np.float64)
        self._cls = np.empty(_REF_BLOCK, dtype=np.int64)
        self._conf = np.empty(_REF_BLOCK, dtype=np.float64)
        self._n = 0
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.errors = 0
        self.non_finite_outputs = 0
        self.feature_counts = [np.zeros(e.size + 1, dtype=np.int64) for e in self.edges]
        self.feature_non_finite = np.zeros(len(self.edges), dtype=np.int64)
        self.class_counts = np.zeros(max(1, len(self.labels)), dtype=np.int64)
        self.conf_counts = np.zeros(self.conf_edges.size + 1, dtype=np.int64)
        self.lat_counts = np.zeros(self.lat_edges.size + 1, dtype=np.int64)
        self.lat_sum = 0.0
        self.lat_max = 0.0
        self._n = 0

    def update(self, features, outputs, latency_ms, error=False) -> None:
        self.count += 1
        if error or outputs is None:
            self.errors += 1
        i = self._n
        if self._x.shape[1]:
            self._x[i] = features
        self._lat[i] = latency_ms
        if outputs is None or error:
            self._cls[i] = -1
            self._conf[i] = np.nan
        else:
            out = np.asarray(outputs, dtype=np.float64).ravel()
            if not np.all(np.isfinite(out)):
                self.non_finite_outputs += 1
                self._cls[i], self._conf[i] = -1, np.nan
            elif out.size > 1:
                k = int(out.argmax())
                self._cls[i], self._conf[i] = k, out[k]
            else:
                p = float(out[0]) if out.size else 0.0
                self._cls[i], self._conf[i] = int(p >= 0.5), max(p, 1.0 - p)
        self._n = i + 1
        if self._n == _REF_BLOCK:
            self._flush()

    def _flush(self) -> None:
        n = self._n
        if n == 0:
            return
        x = self._x[:n]
        for j, edges in enumerate(self.edges):
            col = x[:, j]
            self.feature_counts[j] += _ref_counts(col, edges)
            self.feature_non_finite[j] += int(n - np.count_nonzero(np.isfinite(col)))
        cls = self._cls[:n]
        cls = cls[(cls >= 0) & (cls < self.class_counts.size)]
        self.class_counts += np.bincount(cls, minlength=self.class_counts.size)
        self.conf_counts += _ref_counts(self._conf[:n], self.conf_edges)
        lat = self._lat[:n]
        self.lat_counts += _ref_counts(lat, self.lat_edges)
        self.lat_sum += float(lat.sum())
        self.lat_max = max(self.lat_max, float(lat.max()))
        self._n = 0

    def window(self) -> dict[str, Any]:
        self._flush()
        return {
            "format": STATS_FORMAT,
            "count": int(self.count),
            "errors": int(self.errors),
            "non_finite_outputs": int(self.non_finite_outputs),
            "features": [[int(c) for c in fc] for fc in self.feature_counts],
            "feature_non_finite": [int(c) for c in self.feature_non_finite],
            "class_counts": [int(c) for c in self.class_counts],
            "confidence_counts": [int(c) for c in self.conf_counts],
            "latency_counts": [int(c) for c in self.lat_counts],
            "latency_sum_ms": float(self.lat_sum),
            "latency_max_ms": float(self.lat_max),
        }


def same(ref: RefWindowStats, fast: Any) -> None:
    """The same JSON, byte for byte (floats with repr: every bit)."""
    want, got = ref.window(), fast.window()
    assert json.dumps(got) == json.dumps(want)
    assert got["latency_sum_ms"].hex() == want["latency_sum_ms"].hex()
    compact = json.dumps(want, separators=(",", ":"))
    if math.isfinite(want["latency_sum_ms"]) and math.isfinite(want["latency_max_ms"]):
        assert fast.window_json() == compact.encode()
    else:  # not JSON: refused, as json.dumps(allow_nan=False) refuses it
        with pytest.raises(ValueError):
            fast.window_json()


# --- random sequences ----------------------------------------------------------------------


@st.composite
def baselines(draw: Any) -> dict[str, Any]:
    features = []
    for j in range(draw(st.integers(0, 4))):
        edges = sorted(draw(st.lists(st.integers(-6, 6), min_size=1, max_size=6, unique=True)))
        values = [e / 2 for e in edges]
        kind = draw(st.sampled_from(["plain"] * 6 + ["fine", "huge", "unsorted"]))
        if kind == "fine":  # edges that float32 cannot hold: the rounding must not matter
            values = [v + 1e-9 * (k + 1) for k, v in enumerate(values)]
        elif kind == "huge":
            values[-1] = 3.5e38 if len(values) > 1 else 1e300  # beyond float32
        elif kind == "unsorted" and len(values) > 1:  # not the protocol's: the slow path
            values = values[::-1]
        features.append({"name": f"f{j}", "edges": values})
    outputs: dict[str, Any] = {"labels": [f"c{k}" for k in range(draw(st.integers(0, 4)))]}
    conf = draw(st.sampled_from([None, [0.0, 0.5, 1.0], [0.25, 0.6, 0.9]]))
    if conf is not None:
        outputs["confidence_edges"] = conf
    return {"features": features, "outputs": outputs}


OPS = st.one_of(
    st.tuples(st.just("update"), st.integers(1, 140)),
    st.tuples(st.just("many"), st.sampled_from([1, 2, 31, 63, 64, 65, 200, 1023, 1024, 1100])),
    st.tuples(st.sampled_from(["window", "reset", "release", "fresh"]), st.just(0)),
)


class Rows:
    """Rows, scores and latencies made from a seed, with the awkward values mixed in."""

    def __init__(self, seed: int, base: dict[str, Any], m: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.base, self.m = base, m
        self.edges = [v for f in base["features"] for v in f["edges"]] or [0.0]

    def features(self, n: int, dtype: Any) -> np.ndarray:
        rng, nf = self.rng, len(self.base["features"])
        x = rng.normal(scale=2.0, size=(n, nf))
        pick = rng.random((n, nf))
        x[pick < 0.15] = rng.choice(self.edges, size=int((pick < 0.15).sum()))
        specials = [np.nan, np.inf, -np.inf, 0.5, -0.0, 1e-9, 3.5e38]
        odd = pick > 1.0 - rng.choice([0.0, 0.02, 0.2])
        x[odd] = rng.choice(specials, size=int(odd.sum()))
        with np.errstate(over="ignore"):
            return x.astype(dtype)

    def outputs(self, n: int, m: int | None = None) -> np.ndarray:
        rng, m = self.rng, m or self.m
        out = rng.dirichlet(np.ones(max(m, 2)), size=n)[:, :m]
        pick = rng.random((n, m))
        out[pick < 0.1] = 0.5
        odd = pick > 1.0 - rng.choice([0.0, 0.03, 0.3])
        out[odd] = rng.choice([np.nan, np.inf, -np.inf, 1e39], size=int(odd.sum()))
        with np.errstate(over="ignore"):
            return out.astype(rng.choice([np.float32, np.float64]))

    def latency(self, n: int) -> np.ndarray:
        scale = self.rng.choice([0.01, 1.0, 300.0])
        lat = self.rng.exponential(scale, size=n)
        lat[self.rng.random(n) < 0.05] = 0.0
        return lat


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    base=baselines(),
    m=st.integers(1, 4),
    ops=st.lists(OPS, min_size=1, max_size=10),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_sequences_give_the_windows_of_the_plain_accumulator(impl, base, m, ops, seed):
    data = Rows(seed, base, m)
    rng = data.rng
    ref, fast = RefWindowStats(base), impl(base)
    for op, n in ops:
        dtype = rng.choice([np.float32, np.float32, np.float64])
        if op == "update":  # one row at a time, in the shapes callers pass
            x, out, lat = data.features(n, dtype), data.outputs(n), data.latency(n)
            for i in range(n):
                shape = rng.integers(0, 10)
                row: Any = x[i] if shape > 1 else x[i : i + 1]
                scores: Any = out[i] if shape > 2 else out[i : i + 1]
                if shape == 3:
                    scores = out[i].tolist()
                elif shape == 4:  # another width than the window's first outputs
                    scores = data.outputs(1, int(rng.integers(1, 6)))[0]
                elif shape == 5:
                    scores = out[i].reshape(-1, 1)
                elif shape == 6:
                    scores = None
                elif shape == 7:
                    scores = np.zeros(0)
                if shape == 8:
                    row = x[i].tolist()
                error = bool(rng.random() < 0.05)
                ref.update(row, scores, float(lat[i]), error)
                fast.update(row, scores, float(lat[i]), error)
        elif op == "many":
            x = data.features(n, dtype)
            out: Any = data.outputs(n) if rng.random() > 0.05 else None
            if out is not None and rng.random() < 0.05:
                out = data.outputs(n, m + 1)  # another width: row by row
            lat: Any = data.latency(n) if rng.random() < 0.5 else float(data.latency(1)[0])
            err: Any = rng.random(n) < rng.choice([0.0, 0.05, 1.0])
            if rng.random() < 0.3:
                err = bool(rng.random() < 0.1)
            for i in range(n):
                ref.update(
                    x[i],
                    None if out is None else out[i],
                    lat[i] if isinstance(lat, np.ndarray) else lat,
                    bool(err[i]) if isinstance(err, np.ndarray) else err,
                )
            fast.update_many(x, out, lat, err)
        elif op == "window":  # a window closed mid-block; the window goes on counting
            same(ref, fast)
        elif op == "reset":
            ref.reset()
            fast.reset()
        elif op == "release":  # ends the block, as window() does
            fast.release()
            same(ref, fast)
        else:  # the next window of the same model
            same(ref, fast)
            ref, fast = RefWindowStats(base), fast.fresh()
        assert fast.count == ref.count and fast.errors == ref.errors
    same(ref, fast)


def test_latency_sum_keeps_the_old_64_row_chunks(impl):
    base = {"features": [{"name": "x", "edges": [0.0, 1.0]}], "outputs": {"labels": ["a"]}}
    lat = np.random.default_rng(3).exponential(1e-3, 5000) * np.logspace(0, 6, 5000)
    ref, fast = RefWindowStats(base), impl(base)
    x = np.zeros((5000, 1), np.float32)
    out = np.full((5000, 2), 0.5, np.float32)
    for i in range(1500):
        ref.update(x[i], out[i], lat[i])
        fast.update(x[i], out[i], lat[i])
    same(ref, fast)  # 1500 rows: 23 chunks of 64 and one of 28
    for i in range(1500, 5000):
        ref.update(x[i], out[i], lat[i])
    fast.update_many(x[1500:], out[1500:], lat[1500:])
    same(ref, fast)  # chunks of 64 from row 1500 on, as the old blocks were


def test_update_many_checks_its_arguments(impl):
    w = impl({"features": [{"name": "x", "edges": [0.0, 1.0]}]})
    with pytest.raises(ValueError):
        w.update_many(np.zeros((3, 1)), np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError):
        w.update_many(np.zeros((3, 1)), np.zeros((3, 2)), 1.0, np.zeros(4, bool))
    assert w.window()["count"] == 0


def test_wide_baselines_give_the_windows_of_the_plain_accumulator(impl):
    """Many features (the C code's blocks of 16 and the rest) and many edges (its binary
    search), float32 and float64 rows, values on the edges and non-finite ones."""
    rng = np.random.default_rng(11)
    for n_features, n_edges in ((37, 11), (5, 40), (16, 1), (3, 25), (300, 7)):
        features = []
        for j in range(n_features):
            edges = np.unique(np.round(rng.normal(size=n_edges), 3))
            if j % 5 == 1:
                edges[-1] = 3.5e38  # beyond float32
            features.append({"name": f"f{j}", "edges": edges.tolist()})
        base = {"features": features, "outputs": {"labels": ["a", "b", "c"]}}
        ref, fast = RefWindowStats(base), impl(base)
        x = rng.normal(size=(700, n_features))
        on_edges = rng.random(x.shape) < 0.2
        x[on_edges] = rng.choice([v for f in features for v in f["edges"]], int(on_edges.sum()))
        odd = rng.random(x.shape) < 0.01
        x[odd] = rng.choice([np.nan, np.inf, -np.inf, 1e39], int(odd.sum()))
        with np.errstate(over="ignore"):
            x32 = x.astype(np.float32)
        out = rng.dirichlet(np.ones(3), size=700)
        lat = rng.exponential(1.0, 700)
        for i in range(700):
            row = x32[i] if i % 3 else x[i]
            ref.update(row, out[i], lat[i])
            fast.update(row, out[i], lat[i])
        same(ref, fast)
        for i in range(700):
            ref.update(x32[i], out[i], lat[i])
        fast.update_many(x32, out, lat)
        same(ref, fast)


def test_native_latency_sum_is_numpys_sum():
    require_native()
    from edgeops_protocol import _faststats

    rng = np.random.default_rng(5)
    for n in [*range(1, 140), 200, 257, 300]:
        a = rng.exponential(1.0, n) * 10.0 ** rng.integers(-8, 8, n)
        if n % 7 == 0:
            a[rng.integers(0, n)] = -0.0
        assert _faststats._sum(a).hex() == float(a.sum()).hex()
    assert _faststats._sum(np.full(9, -0.0)).hex() == float(np.full(9, -0.0).sum()).hex()


def test_pure_python_can_be_forced_from_the_environment():
    code = (
        "import edgeops_protocol.stats as s, edgeops_agent.serve as v, "
        "edgeops_agent.telemetry as t; print(s.NATIVE, s.WindowStats.__name__, "
        "v._fastpath, t._fastpath)"
    )
    env = {**os.environ, "EDGEOPS_PURE_PYTHON": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "PyWindowStats", "None", "None"]


def test_the_c_sources_are_c99_and_warning_free():
    gcc = shutil.which("gcc")
    include = sysconfig.get_paths()["include"]
    if gcc is None or not Path(include, "Python.h").exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI has gcc and Python's headers")
        pytest.skip("no gcc or no Python headers")
    for source in ("edgeops_protocol/_faststats.c", "edgeops_agent/_fastpath.c"):
        cmd = [gcc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-fsyntax-only"]
        cmd += [f"-I{include}", f"-I{SRC / 'edgeops_protocol'}", str(SRC / source)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


# --- the agent's path: Predictor and Telemetry ---------------------------------------------

WIDTH = 6


class FakeRunner:
    """Scores from the inputs; NaN inputs give NaN scores; a first value over 50 raises."""

    runtime = "fake"

    def __init__(self, m: int, seed: int) -> None:
        self.m = m
        self.w = np.random.default_rng(seed).normal(size=(WIDTH, m)).astype(np.float32)
        self.inputs = [TensorInfo("x", (-1, WIDTH), "float32")]
        self.outputs = [TensorInfo("y", (-1, m), "float32")]

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if np.any(x[:, 0] > 50):
            raise ValueError("out of range")
        with np.errstate(all="ignore"):  # inf - inf: NaN scores, as a model gives them
            z = x @ self.w
            if self.m == 1:
                return 1.0 / (1.0 + np.exp(-z))
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)


def fake_model(m: int, seed: int, labels: list[str]) -> LoadedModel:
    rng = np.random.default_rng(seed + 100)
    edges = [np.unique(np.round(rng.normal(size=8), 2)).tolist() for _ in range(WIDTH)]
    baseline = {
        "features": [{"name": f"x{j}", "edges": e} for j, e in enumerate(edges)],
        "outputs": {"labels": labels, "confidence_edges": CONFIDENCE_EDGES},
    }
    manifest = {
        "seq": seed + 1,
        "model": {"name": "fake", "version": seed + 1, "variant": f"m{m}", "format": "fake"},
        "artifact": {"sha256": f"{seed:064x}", "size": 1},
        "serving": {"labels": labels, "baseline": baseline},
    }
    return LoadedModel.build(FakeRunner(m, seed), manifest)


class Ticks:
    """``time`` for serve.py: perf_counter moves 0.37 ms a call, so latencies are known."""

    def __init__(self) -> None:
        self.now = 0.0
        self.seen: list[float] = []

    def perf_counter(self) -> float:
        self.now += 0.00037
        self.seen.append(self.now)
        return self.now

    def sleep(self, s: float) -> None:
        pass


def old_results(model: LoadedModel, out: np.ndarray) -> list[dict[str, Any]]:
    """What Predictor._predict returned before it had a one-row path."""
    flat = out.reshape(len(out), -1)
    finite = np.isfinite(flat).all(axis=1)
    label_idx = labels_of(np.where(np.isfinite(out), out, 0.0))
    results = []
    for i in range(len(flat)):
        label: Any = None
        if finite[i]:
            k = int(label_idx[i])
            label = model.labels[k] if 0 <= k < len(model.labels) else k
        scores = [v if math.isfinite(v) else None for v in flat[i].tolist()]
        results.append({"label": label, "scores": scores})
    return results


def calls(seed: int) -> list[np.ndarray]:
    """Matrices of 1 to 1,100 rows with NaN, infinite and out-of-range (raising) rows."""
    rng = np.random.default_rng(seed)
    out = []
    for size in rng.choice([1, 1, 1, 1, 2, 5, 32, 100, 249, 251, 1100], size=60):
        x = rng.normal(scale=1.5, size=(size, WIDTH)).astype(np.float32)
        x[rng.random(x.shape) < 0.01] = np.nan
        x[rng.random(x.shape) < 0.005] = np.inf
        if rng.random() < 0.04:
            x[0, 0] = 99.0  # the runner raises
        out.append(x)
    return out


def drained(telemetry: Telemetry) -> list[dict[str, Any]]:
    items, lost = telemetry.drain()
    assert lost == 0
    return [parse_telemetry(payload)["stats"] for _, payload in items]


@pytest.fixture(params=["native", "python"])
def agent_path(request, monkeypatch) -> str:
    """The agent's one-row path in C (Predictor and Telemetry made after this), or not."""
    if request.param == "native":
        require_native()
    else:
        monkeypatch.setattr(serve_module, "_fastpath", None)
        monkeypatch.setattr(telemetry_module, "_fastpath", None)
        monkeypatch.setattr(telemetry_module, "WindowStats", PyWindowStats)
    return str(request.param)


def test_sampling_picks_the_same_predictions_with_the_c_sink_as_without():
    """With sampling on, the C sink lets the calls between two candidates pass and hands
    the candidate to Python: the same predictions are sampled, and the same windows and
    samples sent, byte for byte, as when every call goes through Python."""
    require_native()

    def run(native: bool) -> tuple[list[int], list[bytes], int, int]:
        with pytest.MonkeyPatch.context() as mp:
            if not native:
                mp.setattr(serve_module, "_fastpath", None)
                mp.setattr(telemetry_module, "_fastpath", None)
                mp.setattr(telemetry_module, "WindowStats", PyWindowStats)
            ticks = Ticks()  # the same latencies on both paths
            mp.setattr(serve_module, "time", types.SimpleNamespace(
                perf_counter=ticks.perf_counter, sleep=ticks.sleep
            ))  # fmt: skip
            now = [1000.0]
            predictor = Predictor()
            telemetry = Telemetry(
                fleet="lab", device="d1", window_count=250, window_s=0,
                samples_per_hour=3600, clock=lambda: now[0],
            )  # fmt: skip
            telemetry.attach(predictor)
            telemetry.start("1-boot")
            assert (telemetry._sink is not None) == native
            predictor.load(fake_model(4, 0, ["a", "b", "c"]))
            rng = np.random.default_rng(5)
            picked, fallbacks = [], 0
            for i in range(9000):
                row = rng.normal(size=(1, WIDTH)).astype(np.float32)
                if native and not telemetry._sink.armed:
                    fallbacks += 1
                if "sample_id" in predictor.predict_features(row)[0]:
                    picked.append(i)
                if i % 100 == 99:  # 100 predictions a second
                    now[0] += 1.0
                    telemetry.tick()
            telemetry.close()
            items, lost = telemetry.drain()
            assert lost == 0
            return picked, [payload for _, payload in items], telemetry._sampler.taken, fallbacks

    c_picked, c_payloads, c_taken, c_fallbacks = run(True)
    py_picked, py_payloads, py_taken, _ = run(False)
    assert c_picked == py_picked and c_taken == py_taken == len(c_picked)
    assert 60 <= len(c_picked) <= 60 + 90 + 5  # the burst, then about one a second
    assert c_payloads == py_payloads and len(c_payloads) == 36 + len(c_picked)
    # Python saw the candidates (and a little more), not every call
    assert c_fallbacks < 0.05 * 9000


@pytest.mark.parametrize(("window_count", "seed"), [(250, 0), (250, 1), (7, 2), (0, 3)])
def test_agent_windows_results_and_listeners_are_those_of_the_old_code(
    window_count, seed, monkeypatch, agent_path
):
    import edgeops_agent.serve as serve

    ticks = Ticks()
    monkeypatch.setattr(serve, "time", types.SimpleNamespace(
        perf_counter=ticks.perf_counter, sleep=ticks.sleep
    ))  # fmt: skip
    heard: list[tuple[Any, ...]] = []
    predictor = Predictor(
        on_prediction=lambda f, o, lat, err: heard.append(
            (f.tolist(), None if o is None else o.tolist(), lat, err)
        )
    )
    telemetry = Telemetry(
        fleet="lab", device="d1", window_count=window_count, window_s=0 if window_count else 60
    )
    telemetry.attach(predictor)
    telemetry.start("1-boot")
    assert (predictor._core is not None) == (agent_path == "native")
    assert (telemetry._sink is not None) == (agent_path == "native")
    models = [fake_model(4, seed, ["a", "b", "c"]), fake_model(1, seed + 1, ["no", "yes"])]
    armed = 0

    want_windows: list[dict[str, Any]] = []
    got: list[dict[str, Any]] = []
    want_heard: list[tuple[Any, ...]] = []
    ref: RefWindowStats | None = None
    ref_model = None

    def close() -> None:
        nonlocal ref
        if ref is not None and ref.count:
            want_windows.append(ref.window())
        ref = None

    for c, x in enumerate(calls(seed)):
        model = models[(c // 17) % 2]  # the model changes every 17 calls
        predictor.load(model)
        given = x  # one row: (k,), (1, k), or (1, k) with gaps between the values
        if len(x) == 1 and c % 3 == 0:
            given = x[0]
        elif len(x) == 1 and c % 3 == 1:
            given = np.repeat(x, 2, axis=1)[:, ::2]
            assert not given.flags["C_CONTIGUOUS"]
        try:  # (the fake runner's matmul rounds a strided row its own way)
            out = np.asarray(model.runner.predict(given.reshape(len(x), -1)), dtype=np.float32)
        except ValueError:
            out = None
        if out is None:
            with pytest.raises(PredictionError):
                predictor.predict_features(given)
        else:
            assert predictor.predict_features(given) == old_results(model, out)
        armed += telemetry._sink is not None and telemetry._sink.armed
        latency = (ticks.seen[-1] - ticks.seen[-2]) * 1000.0 / len(x)  # as the Predictor
        # what the oracle counts: the old per-row listener calls and update() calls
        if model is not ref_model:
            close()
            ref_model = model
        for i in range(len(x)):
            err = out is None or not bool(np.isfinite(out[i]).all())
            want_heard.append(
                (x[i].tolist(), None if out is None else out[i].tolist(), latency, err)
            )
            if ref is None:
                base, problem = window_baseline(model.manifest, WIDTH, model.runner.m)
                assert problem is None
                ref = RefWindowStats(base)
            ref.update(x[i], None if out is None else out[i], latency, out is None)
            if window_count and ref.count >= window_count:
                close()
        got += drained(telemetry)  # as the agent's worker does, before the queue is full
    close()
    telemetry.close()
    got += drained(telemetry)
    assert json.dumps(got) == json.dumps(want_windows)
    assert repr(heard) == repr(want_heard)  # (NaN features: compared as text)
    assert (armed > 0) == (agent_path == "native")  # one-row calls were counted in C


def test_one_row_results_keep_none_for_non_finite_scores_and_the_label_rules(agent_path):
    predictor = Predictor()
    for m, labels in ((4, ["a", "b"]), (1, []), (3, ["a", "b", "c"])):
        model = fake_model(m, 5, labels)
        predictor.load(model)

        class Scripted:
            runtime, inputs, outputs = "fake", model.runner.inputs, model.runner.outputs
            scores: np.ndarray = np.zeros((1, m), np.float32)

            def predict(self, x):
                return self.scores

        model.runner = Scripted()
        predictor.load(model)  # a model is not changed once loaded: loaded again
        rng = np.random.default_rng(m)
        cases = [rng.random((1, m)), np.full((1, m), 0.5), np.array([[1e38] * m])]
        cases += [np.where(rng.random((1, m)) < 0.5, np.nan, 0.2), np.full((1, m), np.inf)]
        cases += [np.array([[-np.inf] + [0.1] * (m - 1)]), np.array([[3e38] * m])]
        for scores in cases:
            model.runner.scores = np.asarray(scores, np.float32)
            got = predictor.predict_features(np.zeros(WIDTH))
            assert got == old_results(model, model.runner.scores)
            batch = np.repeat(model.runner.scores, 3, axis=0)
            model.runner.scores = batch
            assert predictor.predict_features(np.zeros((3, WIDTH))) == old_results(model, batch)


@pytest.mark.parametrize("clock", ["float", "int", "mark"])
def test_window_messages_are_the_bytes_of_telemetry_message(agent_path, clock):
    """Envelopes from the template (float times), from telemetry_message (int times, or a
    boot that holds the template's mark for seq)."""
    ticks = iter(range(10**6))
    clocks = {
        "float": lambda: 1.7e9 + next(ticks) / 7,
        "int": lambda: 1_700_000_000 + next(ticks),
        "mark": lambda: 1.7e9 + next(ticks) / 7,  # with a boot that holds the seq mark
    }
    predictor = Predictor()
    telemetry = Telemetry(
        fleet="lab", device="d1", window_count=50, window_s=0, clock=clocks[clock]
    )
    telemetry.attach(predictor)
    telemetry.start("7340317294053217" if clock == "mark" else "1-boot")
    predictor.load(fake_model(4, 9, ["a", "b", "c"]))
    rng = np.random.default_rng(9)
    items = []
    for i in range(520):
        predictor.predict_features(rng.normal(size=(1, WIDTH)).astype(np.float32))
        if i % 120 == 0:
            items += telemetry.drain()[0]
    telemetry.close()
    got, lost = telemetry.drain()
    items += got
    assert lost == 0 and len(items) == 11
    for _, payload in items:
        fields = {k: v for k, v in json.loads(payload).items() if k not in ("protocol", "type")}
        assert list(fields)[-1] == "stats"
        assert telemetry_message(**fields) == payload
        assert parse_telemetry(payload)["stats"]["count"] in (50, 20)


def test_later_windows_are_still_checked_where_they_can_differ(agent_path, monkeypatch):
    """The first window of a model is checked in full; later ones for their size, their
    latencies and their times. Refused windows are lost, as parse_telemetry failures were."""
    model = fake_model(4, 3, ["a", "b", "c"])
    x = np.zeros((1, WIDTH), np.float32)
    out = np.full((1, 4), 0.25, np.float32)

    def windows(latencies: list[float]) -> tuple[list[bytes], int]:
        for lat in latencies:
            telemetry.on_predictions(model, None, x, out, lat)
        items, lost = telemetry.drain()
        return [payload for _, payload in items], lost

    telemetry = Telemetry(fleet="lab", device="d1", window_count=3, window_s=0)
    telemetry.start("b1")
    assert windows([-1.0] * 3) == ([], 1)  # the first window: parse_telemetry refuses it
    first, lost = windows([1.0] * 3)
    assert lost == 0 and len(first) == 1
    assert windows([1.0, -5.0, 1.0])[1] == 1  # a later one, by the cheap check
    # size: a window whose latency sum has more digits than the first one's
    monkeypatch.setattr(telemetry_module, "MAX_TELEMETRY_BYTES", len(first[0]) + 2)
    longer, lost = windows([0.123456789] * 3)
    assert longer == [] and lost == 1
    assert windows([1.0] * 3)[1] == 0  # the same size as the first: sent


def test_the_sink_counts_strided_rows_as_the_python_class_does():
    """One-row calls whose rows are views with gaps (a slice of a transposed array, as the
    benchmark's CNN rows are), 2-D to 4-D, float32 and float64: the same windows."""
    require_native()
    rng = np.random.default_rng(21)
    for shape, dtype in (((64, 3), np.float32), ((5, 7), np.float64), ((2, 3, 4), np.float32)):
        k = int(np.prod(shape))
        base = {
            "features": [
                {"name": f"x{j}", "edges": np.unique(rng.normal(size=11).round(3)).tolist()}
                for j in range(k)
            ],
            "outputs": {"labels": list("abcd")},
        }
        data = rng.normal(size=(*shape, 300)).astype(dtype)
        data[(0,) * len(shape) + (7,)] = np.nan
        rows = np.moveaxis(data, -1, 0)  # (300, *shape), no row contiguous
        native, ref = NativeWindowStats(base), PyWindowStats(base)
        sink = serve_module._fastpath.RowSink(lambda *a: pytest.fail("not counted in C"))
        model = object()
        sink.arm(model, native, k, 0)
        out = rng.dirichlet(np.ones(4), size=(300, 1)).astype(np.float32)
        for i in range(300):
            assert not rows[i : i + 1].flags["C_CONTIGUOUS"]
            lat = float(i % 11) / 3
            sink(model, None, rows[i : i + 1], out[i], lat)
            ref.update(rows[i : i + 1].reshape(1, -1), out[i], lat)
        same_windows = json.dumps(native.window()) == json.dumps(ref.window())
        assert same_windows, shape
