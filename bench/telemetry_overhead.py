"""On-device statistics overhead: agent predictions with statistics on, against a bare loop.

Usage::

    python bench/telemetry_overhead.py [--quick] [--json OUT] [--check] [--models a,b] [--batch 32]

The issue's target: agent inference throughput with statistics on, over a bare
interpreter loop on the same model, single-row predictions, at least 0.90.

Models: Keras models trained here on the seeded sensor windows
(``edgeops.datasets.sensor_windows``) and converted with the product's converter
(``edgeops.convert.tflite.keras_to_tflite``): an MLP on 33 window statistics
(``mlp-f32``, ``mlp-int8``), the 1-D CNN of the quantization benchmark on raw
windows (192 model inputs, ``cnn-int8``) and its wide variant (``cnn-wide-int8``).
For context, not counted against the target: a much bigger float CNN
(``cnn-large-f32``, 628k parameters), to show the model cost at which the fixed
per-prediction costs fall under 10 %.
Each manifest carries ``serving.baseline`` from ``baseline_profile`` over the
training rows (10 bins a feature, as the pipeline makes it), so the statistics
bin 33 or 192 features per prediction.

Paths, each timed on the same pre-made single rows (``--n`` predictions a block),
interleaved block by block (i, ii, iii, iv, i, ii, ...; who goes first rotates) for
``--reps`` repetitions; medians are reported, and ratios are computed within each
repetition. Blocks are short (500 predictions, a few to a few hundred milliseconds)
and many, so that on a shared machine a block is either undisturbed or visibly not,
and the medians come from the undisturbed ones:

* (i)   ``bare``: the bare interpreter loop, ``interpreter.set_tensor(i, row)``,
        ``interpreter.invoke()``, ``interpreter.get_tensor(o)`` on the runner's own
        interpreter (one thread), with rows already in the input tensor's type (for an
        int8 model quantized beforehand, and its int8 outputs not dequantized): the
        interpreter and nothing else. (Rounds 1 and 2 used the runner's ``predict`` here,
        whose Python glue -- numpy quantize and dequantize, checks -- cost 2.5 to 10 µs a
        row, more than these small models' ``invoke``; see docs/benchmarks.md, round 3);
* (i')  ``runner``: the device runner's ``predict(row)`` (``load_runner``), which the
        agent calls: its one-row call in C when the extension is built (``row_path``:
        ``pointers`` or ``copies``), and ``runner_py``, its Python code (``_predict``),
        for comparison;
* (ii)  ``on``: ``agent.predictor.predict_features(row)`` of a real
        :class:`edgeops_agent.Agent` (not connected) with ``telemetry = true``: the
        predictor (checks, probation listener, labels and scores for the result) and
        the telemetry listener calling ``WindowStats.update``, with the agent's default
        windows (250 predictions or 60 s). Each block ends with ``telemetry.tick()`` and
        ``telemetry.drain()``, the worker's share (closed windows to their messages, the
        first of each model checked with ``parse_telemetry``), so it is counted too (and
        reported apart, "of which worker"); the outbox's disk write (once a window, on
        the worker) is not;
* (iii) ``off``: the same agent path with ``telemetry = false``;
* (iv)  ``sampling``: ``on`` plus sampling at 3600 samples an hour (a tick a block);

and in batches (``--batch`` rows a call, 32 by default; the same rows, grouped):

* (v)   ``bare32``: the runner's ``predict`` on a ``(32, n)`` batch. The TFLite runner
        resizes the interpreter's input to the batch and invokes it once for all rows,
        so this is the like-for-like baseline; it has its own runner (interpreter), so
        that neither it nor the single-row runner is resized back and forth;
* (vi)  ``on32``: ``predict_features`` of a ``(32, n)`` batch, statistics on (the
        telemetry listener counts the batch with ``WindowStats.update_many``), on the
        batch runner;
* (vii) ``off32``: the same with statistics off.

Batched paths are reported per prediction (per row), against both ``bare32`` and the
single-row ``bare`` loop (the interpreter invoked once per row, which is what the
issue's bare loop is).

``WindowStats.update`` alone is timed too, on the same rows and outputs (row views made
beforehand), and ``update_many`` on the same rows in batches (2,048 rows a run: whole
1,024-row blocks).

Which code runs: the C extensions of ``device_agent`` when they are built
(``edgeops_protocol.stats.NATIVE``, printed in the header), else the pure-Python code;
``EDGEOPS_PURE_PYTHON=1`` forces the latter.

Reported: microseconds per prediction; ``on/bare`` = throughput of (ii) over (i)
(the target), and the same from each path's fastest block (``on/bare, fastest
blocks``: on a shared machine the least disturbed blocks, a check on the medians);
``runner_speedup`` = ``runner_py`` over ``runner`` (the C row path's gain);
``on/off`` = what the statistics alone cost the agent path; the
statistics' cost in microseconds = (ii) - (iii), per repetition; for batches
``on32/bare32`` and ``on32/bare``. The exit status is 0 whatever the numbers; with
``--check`` it is 1 if a model misses the target (single rows, the issue's target).
Results and their explanation: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TARGET = 0.90
CONTEXT = {"cnn-large-f32"}  # shown for comparison, not counted by --check
ALL_MODELS = "mlp-f32,mlp-int8,cnn-int8,cnn-wide-int8,cnn-large-f32"
SEED = 0
LABELS = ["walk", "run", "still", "stairs"]
PATHS = ("bare", "runner", "runner_py", "on", "off", "sampling", "bare32", "on32", "off32")


@dataclass
class Result:
    model: str
    params: int
    model_bytes: int
    features: int
    us: dict[str, float]  # median microseconds per prediction (per row), by path
    update_us: float  # WindowStats.update alone
    update_many_us: float  # WindowStats.update_many alone, per row, in batches
    stats_us: float  # median over repetitions of (on - off)
    worker_us: dict[str, float]  # of which the worker's share (tick, drain: windows to JSON)
    on_over_bare: float  # throughput ratio, median over repetitions
    on_over_off: float
    off_over_bare: float
    on_over_bare_iqr: tuple[float, float]  # 25th and 75th percentiles over repetitions
    met: bool
    batch: int  # rows per call of the batched paths
    on32_over_bare32: float  # batched agent, statistics on, over the batched runner
    on32_over_bare: float  # batched agent, statistics on, over the single-row bare loop
    on32_over_off32: float
    on32_over_bare32_iqr: tuple[float, float]
    stats32_us: float  # median over repetitions of (on32 - off32), per row
    best_us: dict[str, float] = field(default_factory=dict)  # fastest block of each path
    on_over_bare_best: float = 0.0  # bare's fastest block over on's fastest block
    row_path: str = ""  # how the runner ran one row: pointers, copies (C) or python
    runner_speedup: float = 0.0  # runner_py / runner: the C row path against the Python one
    reps: list[dict[str, float]] = field(default_factory=list)


# --- data and models ----------------------------------------------------------------------


def sensor_data(n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw windows ``(n, 64, 3)`` and labels from the seeded sensor data."""
    from edgeops.datasets import sensor_windows

    frame = sensor_windows(n_per_class=n_per_class, seed=SEED)
    axes = [[c for c in frame.columns if c.startswith(f"{a}_")] for a in ("ax", "ay", "az")]
    raw = np.stack([frame[cols].to_numpy(np.float32) for cols in axes], axis=-1)
    y = frame["label"].map({k: i for i, k in enumerate(sorted(set(frame["label"])))})
    return raw, y.to_numpy(np.int64)


def window_stats(raw: np.ndarray) -> np.ndarray:
    """33 statistics of each window: 11 per axis."""
    q = np.quantile(raw, [0.1, 0.5, 0.9], axis=1)
    d = np.diff(raw, axis=1)
    centred = raw - raw.mean(axis=1, keepdims=True)
    crossings = (np.sign(centred[:, 1:]) != np.sign(centred[:, :-1])).mean(axis=1)
    parts = [
        raw.mean(axis=1), raw.std(axis=1), raw.min(axis=1), raw.max(axis=1), q[0], q[1], q[2],
        (raw**2).mean(axis=1), crossings, np.abs(d).mean(axis=1), np.ptp(raw, axis=1),
    ]  # fmt: skip
    return np.concatenate(parts, axis=1).astype(np.float32)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    axes = tuple(range(train.ndim - 1))
    mean, std = train.mean(axis=axes), train.std(axis=axes) + 1e-6
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


def build_models(quick: bool, names: list[str]) -> list[tuple[str, Any, np.ndarray, np.ndarray]]:
    """``(name, keras model, training rows, held-out rows)`` for each requested model."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    raw, y = sensor_data(150 if quick else 400)
    split = int(0.75 * len(raw))
    stats_train, stats_test = standardize(window_stats(raw[:split]), window_stats(raw[split:]))
    raw_train, raw_test = standardize(raw[:split], raw[split:])
    epochs = 5 if quick else 20
    out = []

    def fit(layers: list[Any], x: np.ndarray, epochs: int = epochs) -> Any:
        model = tf.keras.Sequential([tf.keras.Input(x.shape[1:]), *layers])
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y[:split], epochs=epochs, batch_size=32, verbose=0)
        return model

    L = tf.keras.layers
    if {"mlp-f32", "mlp-int8"} & set(names):
        mlp = fit([L.Dense(64, "relu"), L.Dense(32, "relu"), L.Dense(4, "softmax")], stats_train)
        out += [(n, mlp, stats_train, stats_test) for n in ("mlp-f32", "mlp-int8") if n in names]
    for name, filters, dense in (("cnn-int8", (16, 16), 32), ("cnn-wide-int8", (64, 128), 128)):
        if name in names:
            cnn = fit(
                [
                    L.Conv1D(filters[0], 5, activation="relu"),
                    L.MaxPooling1D(2),
                    L.Conv1D(filters[1], 5, activation="relu"),
                    L.GlobalAveragePooling1D(),
                    L.Dense(dense, "relu"),
                    L.Dense(4, "softmax"),
                ],
                raw_train,
            )
            out.append((name, cnn, raw_train, raw_test))
    if "cnn-large-f32" in names:
        convs = [L.Conv1D(k, 5, activation="relu", padding="same") for k in (128, 256, 256)]
        big = [*convs, L.GlobalAveragePooling1D(), L.Dense(512, "relu"), L.Dense(4, "softmax")]
        # here for its cost, not its accuracy: a few epochs
        out.append(("cnn-large-f32", fit(big, raw_train, min(epochs, 3)), raw_train, raw_test))
    return out


def manifest_for(data: bytes, name: str, baseline: dict[str, Any]) -> dict[str, Any]:
    import hashlib

    return {
        "seq": 1,
        "model": {"name": "bench", "version": 1, "variant": name, "format": "tflite"},
        "artifact": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)},
        "serving": {"labels": LABELS, "baseline": baseline},
    }


# --- timing -------------------------------------------------------------------------------


def make_agent(state: Path, **over: Any) -> Any:
    from edgeops_agent import Agent, AgentConfig

    config = AgentConfig(
        device="bench",
        fleet="bench",
        state_dir=state,
        public_keys=(bytes(32),),
        runtimes=("ai-edge-litert",),
        **over,
    )
    agent = Agent(config)
    agent.telemetry.start("1-bench")  # what Agent.start() does, without connecting
    return agent


def time_block(
    fn: Callable[[np.ndarray], Any], rows: list[np.ndarray], n: int, per_call: int = 1
) -> float:
    """Microseconds per row of ``fn`` over ``n`` calls cycling through ``rows``
    (``per_call`` rows a call)."""
    k = len(rows)
    gc.collect()
    start = time.perf_counter_ns()
    for i in range(n):
        fn(rows[i % k])
    return (time.perf_counter_ns() - start) / (n * per_call) / 1000.0


def measure(name: str, keras_model: Any, train: np.ndarray, test: np.ndarray, args: Any) -> Result:
    from edgeops.convert.tflite import keras_to_tflite
    from edgeops_agent.runtime import load_runner
    from edgeops_agent.runtime.tflite import quantize
    from edgeops_agent.serve import LoadedModel
    from edgeops_agent.telemetry import window_baseline
    from edgeops_protocol.baseline import baseline_profile
    from edgeops_protocol.stats import WindowStats

    conversion = keras_to_tflite(keras_model, "int8" if "int8" in name else "f32", train)
    data = conversion.data
    runner = load_runner("tflite", data)
    flat_train = train.reshape(len(train), -1)
    outputs = runner.predict(train)
    features = [f"x{j}" for j in range(flat_train.shape[1])]
    baseline = baseline_profile(flat_train, outputs, features, LABELS)
    manifest = manifest_for(data, name, baseline)
    # C-contiguous single rows, as an application hands them over (a view of a row of a
    # bigger array is fine too: the C paths gather strided rows; tests cover that)
    rows = [np.ascontiguousarray(test[i : i + 1]) for i in range(min(256, len(test)))]
    # the bare loop's inputs: the rows in the input tensor's own type, quantized beforehand
    # for an integer model (quantize(): the runner's own rule), so the loop is only the
    # interpreter: set_tensor, invoke, get_tensor (raw outputs, not dequantized)
    runner.predict(rows[0])  # back to one row (baseline_profile ran the training rows)
    interpreter = runner._interpreter  # the bare loop is the interpreter itself
    in_index, out_index = runner._in_index, runner._out_index
    if runner.inputs[0].dtype == "float32":
        fed = rows
    else:
        info = runner.inputs[0]
        fed = [quantize(r, info.scale, info.zero_point, info.dtype) for r in rows]

    def bare(x: np.ndarray) -> Any:
        interpreter.set_tensor(in_index, x)
        interpreter.invoke()
        return interpreter.get_tensor(out_index)

    size = args.batch
    batches = [np.concatenate(rows[i : i + size]) for i in range(0, len(rows) - size + 1, size)]
    runner_b = load_runner("tflite", data)  # stays at the batch size (see the module doc)

    tmp = Path(tempfile.mkdtemp(prefix="edgeops-bench-"))
    agents = {
        "on": make_agent(tmp / "on"),
        "off": make_agent(tmp / "off", telemetry=False),
        "sampling": make_agent(tmp / "sampling", samples_per_hour=3600),
        "on32": make_agent(tmp / "on32"),
        "off32": make_agent(tmp / "off32", telemetry=False),
    }
    for path, agent in agents.items():
        agent.predictor.load(
            LoadedModel.build(runner_b if path.endswith("32") else runner, manifest)
        )

    def block(path: str, n: int) -> float:
        batched = path.endswith("32")
        calls, inputs, per_call = (max(1, n // size), batches, size) if batched else (n, rows, 1)
        if path == "bare":
            return time_block(bare, fed, calls)
        if path == "runner":
            return time_block(runner.predict, inputs, calls)
        if path == "runner_py":  # (the runner of rounds 1 and 2 has only its Python code)
            return time_block(getattr(runner, "_predict", runner.predict), inputs, calls)
        if path == "bare32":
            return time_block(runner_b.predict, inputs, calls, per_call)
        agent = agents[path]
        us = time_block(agent.predictor.predict_features, inputs, calls, per_call)
        start = time.perf_counter_ns()
        agent.telemetry.tick()  # the agent's tick (closes windows by time, sampling rate)
        agent.telemetry.drain()  # the worker's share: windows to JSON
        worker = (time.perf_counter_ns() - start) / (calls * per_call) / 1000.0
        worker_us.setdefault(path, []).append(worker)
        return us + worker

    worker_us: dict[str, list[float]] = {}

    # Everything made so far (TensorFlow, Keras, the models: millions of objects a device
    # agent never has) out of the collector's way: the gc.collect() before each block then
    # walks only what the blocks make, instead of evicting every cache before each block
    # (which cost the short blocks up to 0.8 µs a prediction, more for the path with more
    # code; rounds 1 and 2 ran that way).
    if not args.no_freeze:
        gc.freeze()
    for path in PATHS:  # warm up: interpreter, caches, the first window's baseline
        block(path, 500)
    worker_us.clear()
    row_path = getattr(runner, "row_path", "python")  # before a batch resizes the interpreter
    reps: list[dict[str, float]] = []
    for r in range(args.reps):
        order = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]  # rotate who goes first
        reps.append({path: block(path, args.n) for path in order})

    # WindowStats.update alone, on the same rows and the model's outputs
    x = np.stack([row.reshape(-1) for row in rows]).astype(np.float32)
    out = runner.predict(np.concatenate(rows))
    ws = WindowStats(window_baseline(manifest, x.shape[1], out.shape[1])[0])
    k = len(x)
    x_rows, out_rows = list(x), list(out)  # the rows' views, made once
    n_alone = max(args.n, 2048)  # whole 1,024-row blocks: each run pays for its flushes
    update_runs = []
    for _ in range(max(3, args.reps // 3)):
        gc.collect()
        start = time.perf_counter_ns()
        for i in range(n_alone):
            ws.update(x_rows[i % k], out_rows[i % k], 0.05)
        update_runs.append((time.perf_counter_ns() - start) / n_alone / 1000.0)
    # WindowStats.update_many alone, in batches of the same rows
    xb = [x[i : i + size] for i in range(0, k - size + 1, size)]
    ob = [out[i : i + size] for i in range(0, k - size + 1, size)]
    calls = max(1, n_alone // size)
    many_runs = []
    for _ in range(max(3, args.reps // 3)):
        gc.collect()
        start = time.perf_counter_ns()
        for i in range(calls):
            ws.update_many(xb[i % len(xb)], ob[i % len(ob)], 0.05)
        many_runs.append((time.perf_counter_ns() - start) / (calls * size) / 1000.0)

    def quartile(values: list[float], k: int) -> float:
        return float(np.percentile(values, 25 * k))

    def med(key: str) -> float:
        return statistics.median(rep[key] for rep in reps)

    on_bare = [rep["bare"] / rep["on"] for rep in reps]
    on32_bare32 = [rep["bare32"] / rep["on32"] for rep in reps]
    return Result(
        model=name,
        params=int(keras_model.count_params()),
        model_bytes=len(data),
        features=x.shape[1],
        us={p: round(med(p), 2) for p in PATHS},
        update_us=round(statistics.median(update_runs), 2),
        update_many_us=round(statistics.median(many_runs), 2),
        stats_us=round(statistics.median(rep["on"] - rep["off"] for rep in reps), 2),
        worker_us={p: round(statistics.median(v), 2) for p, v in worker_us.items()},
        on_over_bare=round(statistics.median(on_bare), 3),
        on_over_off=round(statistics.median(rep["off"] / rep["on"] for rep in reps), 3),
        off_over_bare=round(statistics.median(rep["bare"] / rep["off"] for rep in reps), 3),
        on_over_bare_iqr=(round(quartile(on_bare, 1), 3), round(quartile(on_bare, 3), 3)),
        met=statistics.median(on_bare) >= TARGET,
        batch=size,
        on32_over_bare32=round(statistics.median(on32_bare32), 3),
        on32_over_bare=round(statistics.median(rep["bare"] / rep["on32"] for rep in reps), 3),
        on32_over_off32=round(statistics.median(rep["off32"] / rep["on32"] for rep in reps), 3),
        on32_over_bare32_iqr=(
            round(quartile(on32_bare32, 1), 3),
            round(quartile(on32_bare32, 3), 3),
        ),
        stats32_us=round(statistics.median(rep["on32"] - rep["off32"] for rep in reps), 2),
        best_us={p: round(min(rep[p] for rep in reps), 2) for p in PATHS},
        on_over_bare_best=round(
            min(rep["bare"] for rep in reps) / min(rep["on"] for rep in reps), 3
        ),
        row_path=row_path,
        runner_speedup=round(
            statistics.median(rep["runner_py"] / rep["runner"] for rep in reps), 2
        ),
        reps=reps,
    )


# --- report -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    from edgeops_protocol import stats

    versions = {}
    for pkg in ("numpy", "ai-edge-litert", "tensorflow", "tensorflow-cpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {
        "native": bool(getattr(stats, "NATIVE", False)),  # the C extensions run
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": names[0] if names else platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load": os.getloadavg(),
        "versions": versions,
    }


def table(results: list[Result]) -> str:
    head = (
        "| model | inputs | bare µs | runner µs (row path) | runner, Python µs | agent off µs "
        "| agent on µs | +sampling µs | stats µs "
        "| of which worker µs | update() µs | on/bare (IQR), target ≥ 0.90 | on/off | off/bare "
        "| on/bare, fastest blocks |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- "
        "| ---: | ---: | ---: |\n"
    )
    lines = []
    for r in results:
        lo, hi = r.on_over_bare_iqr
        verdict = "PASS" if r.met else "MISS"
        star = "\\*" if r.model in CONTEXT else ""
        lines.append(
            f"| {r.model}{star} | {r.features} | {r.us['bare']:.1f} "
            f"| {r.us['runner']:.1f} ({r.row_path}) | {r.us['runner_py']:.1f} | {r.us['off']:.1f} "
            f"| {r.us['on']:.1f} | {r.us['sampling']:.1f} | {r.stats_us:.1f} "
            f"| {r.worker_us.get('on', 0.0):.1f} | {r.update_us:.1f} "
            f"| {r.on_over_bare:.2f} ({lo:.2f}–{hi:.2f}) {verdict} | {r.on_over_off:.2f} "
            f"| {r.off_over_bare:.2f} | {r.on_over_bare_best:.2f} |"
        )
    batch = results[0].batch if results else 32
    head2 = (
        f"\n\nBatches of {batch} rows (µs per row):\n\n"
        "| model | bare µs (1 row/call) | bare µs (batch) | agent off µs | agent on µs "
        "| stats µs | of which worker µs | update_many() µs | on/bare-batch (IQR) "
        "| on/bare (1 row/call) | on/off |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |\n"
    )
    lines2 = []
    for r in results:
        lo, hi = r.on32_over_bare32_iqr
        star = "\\*" if r.model in CONTEXT else ""
        lines2.append(
            f"| {r.model}{star} | {r.us['bare']:.1f} | {r.us['bare32']:.1f} | {r.us['off32']:.1f} "
            f"| {r.us['on32']:.1f} | {r.stats32_us:.1f} | {r.worker_us.get('on32', 0.0):.1f} "
            f"| {r.update_many_us:.2f} "
            f"| {r.on32_over_bare32:.2f} ({lo:.2f}–{hi:.2f}) | {r.on32_over_bare:.2f} "
            f"| {r.on32_over_off32:.2f} |"
        )
    return head + "\n".join(lines) + head2 + "\n".join(lines2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and repetitions")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 if a model misses 0.90")
    parser.add_argument(
        "--models",
        default=ALL_MODELS,
        help=f"comma-separated, of {ALL_MODELS}",
    )
    parser.add_argument("--reps", type=int, help="repetitions (default 61; --quick 21)")
    parser.add_argument("--n", type=int, help="predictions per block (default 500; --quick 200)")
    parser.add_argument("--batch", type=int, default=32, help="rows a call, batched paths")
    parser.add_argument(
        "--no-freeze",
        action="store_true",
        help="do not gc.freeze() the setup's objects (rounds 1 and 2's method)",
    )
    args = parser.parse_args(argv)
    args.reps = args.reps or (21 if args.quick else 61)
    args.n = args.n or (200 if args.quick else 500)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    info = machine()
    print(f"# {info['date']}; {info['cpu']}, {info['cores']} cores; load {info['load']}")
    print(f"# C extensions: {'yes' if info['native'] else 'no (pure Python)'}")
    t0 = time.monotonic()
    models = build_models(args.quick, names)
    print(f"# trained and converted {len(models)} models in {time.monotonic() - t0:.0f} s")
    results = []
    for name, keras_model, train, test in models:
        result = measure(name, keras_model, train, test, args)
        results.append(result)
        print(f"{name}: {json.dumps({k: v for k, v in asdict(result).items() if k != 'reps'})}")
        sys.stdout.flush()
    info["load_end"] = os.getloadavg()
    info["seconds"] = round(time.monotonic() - t0, 1)
    print()
    print(table(results))
    print(f"\n# {info['seconds']} s; load at the end {info['load_end']}")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": info, "args": vars(args) | {"json": str(args.json)},
                        "results": [asdict(r) for r in results]}, indent=1)
        )  # fmt: skip
    missed = [r.model for r in results if not r.met and r.model not in CONTEXT]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
