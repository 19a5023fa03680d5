"""Quantization benchmark: what int8 costs and saves against float32, measured in one run.

Usage::

    python bench/quantization.py [--quick] [--json OUT] [--check] [--workspace DIR] [--verbose]

Everything goes through the product path: a fresh workspace, the data sets
registered with ``ws.data.add``, feature specs with ``ws.features.add``, and one
pipeline per model (``run_pipeline``) that trains, exports ``tflite-f32``,
``tflite-int8``, ``c-tflm``, ``onnx-f32`` and ``onnx-int8``, and measures each
variant in its runtime. The numbers printed are the registered variants'
metrics, plus a batch comparison of f32 and int8 measured here with the device
runner (``edgeops_agent.runtime.load_runner``), in the same process, one after
the other.

Targets (from the issue), printed as PASS or MISS next to each number:

* TFLite int8 bytes / f32 bytes <= 0.30; ONNX int8 / f32 <= 0.35;
* accuracy lost to int8 <= 1.0 point; agreement with the float model >= 98 %;
* int8 latency / f32 latency in the same runtime <= 1.0.

Data: scikit-learn's bundled digits and ``edgeops.datasets.sensor_windows``
(seed :data:`DATA_SEED`); every seed is fixed, so two runs train the same
models. The exit status is 0 whatever the numbers (this is a measurement);
with ``--check`` it is 1 if any target is missed. ``--quick`` trains fewer
epochs on fewer sensor rows and times fewer repetitions. ``--workspace DIR``
keeps the workspace (``edgeops -w DIR models show digits-mlp@1``); TensorFlow's
log goes to ``DIR.log`` unless ``--verbose``. Results are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import _report  # bench/_report.py; the script folder is on sys.path
import numpy as np
from _report import stderr_to

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATA_SEED = 0
PIXELS = [f"px_{i:02d}" for i in range(64)]
AXES = ("ax", "ay", "az")
WINDOW = 64
KERAS_EXPORTS = ["tflite-f32", "tflite-int8", "c-tflm", "onnx-f32", "onnx-int8"]
TARGETS = {
    "tflite_size_ratio": 0.30,  # int8 / f32 bytes, at most
    "onnx_size_ratio": 0.35,
    "accuracy_drop_points": 1.0,  # original minus int8 variant, at most
    "agreement": 0.98,  # at least
    "latency_ratio": 1.0,  # int8 / f32 time per row, at most
}

FEATURE_SPECS: dict[str, dict[str, Any]] = {
    "pixels": {
        "name": "pixels",
        "description": "the 64 digit pixels (0..16), min-max scaled to 0..1",
        "inputs": [{"name": c, "kind": "numeric"} for c in PIXELS],
        "steps": [{"op": "select", "columns": PIXELS}, {"op": "scale", "method": "minmax"}],
    },
    "wrist-stats": {
        "name": "wrist-stats",
        "description": "window statistics and 4 FFT bands per axis, standardized",
        "inputs": [{"name": a, "kind": "window", "length": WINDOW} for a in AXES],
        "steps": [
            *({"op": "window_stats", "input": a} for a in AXES),
            *({"op": "fft_bands", "input": a, "bands": 4} for a in AXES),
            {"op": "scale", "method": "standard"},
        ],
    },
    "wrist-raw": {
        "name": "wrist-raw",
        "description": "raw windows, axis after axis, each sample position standardized",
        "inputs": [{"name": a, "kind": "window", "length": WINDOW} for a in AXES],
        "steps": [
            *({"op": "window_raw", "input": a} for a in AXES),
            {"op": "scale", "method": "standard"},
        ],
    },
}


@dataclass(frozen=True)
class Case:
    """One model: its data, features, model kind and parameters, and what to export."""

    name: str
    data: str  # "digits" or "sensors"
    features: str
    kind: str
    params: dict[str, Any]
    quick: dict[str, Any]  # parameter overrides under --quick
    export: list[str] = field(default_factory=lambda: list(KERAS_EXPORTS))
    context: bool = False  # shown for comparison; its misses do not fail --check


CASES = [
    Case("digits-mlp", "digits", "pixels", "keras_mlp",
         {"hidden": [128, 64], "epochs": 60}, {"epochs": 15}),
    Case("sensor-mlp", "sensors", "wrist-stats", "keras_mlp",
         {"hidden": [64, 32], "epochs": 60}, {"epochs": 15}),
    Case("sensor-cnn", "sensors", "wrist-raw", "keras_cnn1d",
         {"channels": 3, "filters": [16, 16], "kernel_size": 5, "dense": 32, "epochs": 30},
         {"epochs": 8}),
    Case("sensor-cnn-wide", "sensors", "wrist-raw", "keras_cnn1d",
         {"channels": 3, "filters": [64, 128], "kernel_size": 5, "dense": 128, "epochs": 30},
         {"epochs": 8}, context=True),
    Case("digits-sklearn-mlp", "digits", "pixels", "mlp",
         {"hidden_layer_sizes": [128, 64], "max_iter": 300}, {"max_iter": 60},
         export=["onnx-f32", "onnx-int8", "c-emlearn"], context=True),
]  # fmt: skip


@dataclass(frozen=True)
class Settings:
    quick: bool
    sensor_rows_per_class: int
    throughput_rows: int  # a multiple of 64, so every batch of 64 is full
    repeats: int


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(True, 150, 512, 5)
    return Settings(False, 500, 4096, 21)


# -- pure: sizes, checks ----------------------------------------------------------------------


def tflite_breakdown(model: bytes) -> dict[str, int]:
    """Where the bytes of a TFLite flatbuffer go.

    ``data_<type>``: constant tensor data (weights, biases, shape constants) by
    element type; ``quant_params``: 4 B per scale, 8 B per zero point (int64 in
    the schema), 4 B per min/max; ``channels``: entries of per-channel scale
    vectors on constant tensors; ``params``: float32 constant elements (the
    weights of a float model); ``names``: tensor name strings; ``rest``: what
    remains (tables for tensors and operators, shapes, vector headers and
    padding, signature, metadata).
    """
    from ai_edge_litert import schema_py_generated as fb

    root = fb.Model.GetRootAs(model, 0)
    types = {v: k.lower() for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    out = dict.fromkeys(("quant_params", "channels", "params", "names", "tensors", "ops"), 0)
    for g in range(root.SubgraphsLength()):
        graph = root.Subgraphs(g)
        out["ops"] += graph.OperatorsLength()
        out["tensors"] += graph.TensorsLength()
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            out["names"] += len(tensor.Name() or b"")
            data = root.Buffers(tensor.Buffer()).DataLength() if tensor.Buffer() else 0
            if data:
                key = f"data_{types.get(tensor.Type(), tensor.Type())}"
                out[key] = out.get(key, 0) + data
                if tensor.Type() == fb.TensorType.FLOAT32:
                    out["params"] += data // 4
            q = tensor.Quantization()
            if q is not None:
                out["quant_params"] += 4 * (q.ScaleLength() + q.MinLength() + q.MaxLength())
                out["quant_params"] += 8 * q.ZeroPointLength()
                if data and q.ScaleLength() > 1:
                    out["channels"] += q.ScaleLength()
    out["tensor_data"] = sum(v for k, v in out.items() if k.startswith("data_"))
    out["rest"] = len(model) - out["tensor_data"] - out["quant_params"] - out["names"]
    out["total"] = len(model)
    return out


@dataclass(frozen=True)
class Check:
    """One measured value against its target. ``column`` groups checks in the summary."""

    case: str
    column: str
    detail: str
    value: float
    target: float
    higher_is_better: bool
    context: bool = False

    @property
    def passed(self) -> bool:
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    @property
    def mark(self) -> str:
        return "PASS" if self.passed else "MISS"

    @property
    def target_text(self) -> str:
        if self.column == "agreement":
            return f">= {100 * self.target:g}%"
        return f"{'>=' if self.higher_is_better else '<='} {self.target:.2f}"


# latency rows that are checked; "batch 1, invoke only" explains a ratio and is not a target
LATENCY_MODES = ("single row (stored p50)", "batch 1, runner", "batch 64, runner")


def checks_of(result: dict[str, Any], context: bool) -> list[Check]:
    """Every target that applies to one case's measurements."""
    out = []

    def add(column: str, detail: str, value: float, key: str, higher: bool = False) -> None:
        out.append(Check(result["name"], column, detail, value, TARGETS[key], higher, context))

    for runtime in ("tflite", "onnx"):
        if runtime in result["sizes"]:
            ratio = result["sizes"][runtime]["ratio"]
            add(f"{runtime} size", "int8/f32 bytes", ratio, f"{runtime}_size_ratio")
    for variant, m in result["int8"].items():
        add("accuracy drop", variant, m["drop_points"], "accuracy_drop_points")
        add("agreement", variant, m["agreement"], "agreement", higher=True)
    for runtime, rows in result["latency"].items():
        for mode in LATENCY_MODES:
            add(f"{runtime} latency", mode, rows[mode]["ratio"], "latency_ratio")
    return out


# -- measuring ---------------------------------------------------------------------------------


def throughput(
    fns: dict[str, Callable[[np.ndarray], Any]],
    inputs: dict[str, np.ndarray],
    batch: int,
    repeats: int,
) -> dict[str, float]:
    """Median microseconds per row of each function over ``repeats`` passes in ``batch``-row
    calls. Passes alternate the order of the functions, so drift in the machine's speed
    falls on both sides of a comparison."""
    names = list(fns)
    chunks = {n: [inputs[n][i : i + batch] for i in range(0, len(inputs[n]), batch)] for n in names}
    for n in names:  # warm-up: first calls allocate and resize
        for chunk in chunks[n][:8]:
            fns[n](chunk)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            fn, parts = fns[n], chunks[n]
            t0 = time.perf_counter()
            for chunk in parts:
                fn(chunk)
            times[n].append((time.perf_counter() - t0) * 1e6 / len(inputs[n]))
    return {n: statistics.median(t) for n, t in times.items()}


def _invoke_only(model: bytes, X: np.ndarray) -> tuple[Callable[[np.ndarray], Any], np.ndarray]:
    """A batch-1 TFLite call without the runner's float<->int8 conversion, and its inputs
    already in the input tensor's type: what the interpreter itself costs."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeops_agent.runtime.tflite import quantize

    interp = Interpreter(model_content=model, num_threads=1)
    interp.allocate_tensors()
    detail, out = interp.get_input_details()[0], interp.get_output_details()[0]
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    rows = quantize(X, scale, zero, dtype) if dtype.kind == "i" else X.astype(dtype)
    index, out_index = detail["index"], out["index"]

    def call(row: np.ndarray) -> Any:
        interp.set_tensor(index, row)
        interp.invoke()
        return interp.get_tensor(out_index)

    return call, rows


def latency_rows(ws: Any, ref: str, names: set[str], X: np.ndarray, s: Settings) -> dict:
    """Single-row p50 stored with each variant, and batch-1 / batch-64 time per row measured
    here, f32 against int8 in the same runtime."""
    from edgeops_agent.runtime import load_runner

    metrics = {v.name: v.metrics for v in ws.registry.get_version(ref).variants}
    rows = np.resize(X, (s.throughput_rows, X.shape[1])).astype(np.float32)
    result: dict[str, dict[str, dict[str, float]]] = {}
    for runtime in ("tflite", "onnx"):
        f32, int8 = f"{runtime}-f32", f"{runtime}-int8"
        if not {f32, int8} <= names:
            continue
        table = {"single row (stored p50)": _pair(metrics[f32], metrics[int8])}
        blobs = {n: ws.registry.variant_bytes(ref, n) for n in (f32, int8)}
        for batch in (1, 64):
            runners = {n: load_runner(runtime, b).predict for n, b in blobs.items()}
            us = throughput(runners, dict.fromkeys(runners, rows), batch, s.repeats)
            table[f"batch {batch}, runner"] = _pair_us(us[f32], us[int8])
        if runtime == "tflite":
            calls = {n: _invoke_only(b, rows) for n, b in blobs.items()}
            us = throughput(
                {n: c[0] for n, c in calls.items()},
                {n: c[1] for n, c in calls.items()},
                1,
                s.repeats,
            )
            table["batch 1, invoke only"] = _pair_us(us[f32], us[int8])
        result[runtime] = table
    return result


def _pair(f32: dict[str, Any], int8: dict[str, Any]) -> dict[str, float]:
    return _pair_us(f32["latency_ms_p50"] * 1000, int8["latency_ms_p50"] * 1000)


def _pair_us(f32: float, int8: float) -> dict[str, float]:
    return {"f32_us": f32, "int8_us": int8, "ratio": int8 / f32}


# -- the product path --------------------------------------------------------------------------


class Progress:
    """Pipeline reporter that prints each step with the seconds since the start."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0

    def step(self, name: str, detail: str = "", cached: bool = False) -> None:
        print(f"  [{time.perf_counter() - self.t0:6.1f} s] {name}: {detail}", flush=True)

    def progress(self, name: str, done: int, total: int) -> None:
        pass


def prepare_workspace(home: Path, s: Settings) -> Any:
    """A new workspace with both data sets and the three feature specs registered."""
    from edgeops import Workspace
    from edgeops.datasets import digits_frame, sensor_windows, write_table

    ws, _ = Workspace.init(home)
    tables = {
        "digits": digits_frame(),
        "sensors": sensor_windows(n_per_class=s.sensor_rows_per_class, seed=DATA_SEED),
    }
    for name, frame in tables.items():
        path = write_table(frame, home / f"{name}.csv")
        ws.data.add(path, name, message="quantization benchmark")
    for spec in FEATURE_SPECS.values():
        ws.features.add(spec)
    return ws


def pipeline_text(case: Case, s: Settings) -> str:
    """The pipeline file of one case, as YAML (it is recorded on the run)."""
    import yaml

    params = {**case.params, **(case.quick if s.quick else {})}
    doc = {
        "name": case.name,
        "description": f"quantization benchmark: {case.kind} on {case.data}",
        "data": f"{case.data}@1",
        "label": "label",
        "features": f"{case.features}@1",
        "split": {"test_size": 0.25, "seed": 42, "stratify": True},
        "model": {"kind": case.kind, "params": params, "seed": 0},
        "export": case.export,
        "calibration": {"samples": 300, "seed": 0},
    }
    return str(yaml.safe_dump(doc, sort_keys=False))


def run_case(ws: Any, case: Case, s: Settings, t0: float) -> dict[str, Any]:
    import yaml

    from edgeops.pipeline import parse_pipeline
    from edgeops.pipeline.run import QuietReporter, load_labels, prepare, run_pipeline

    text = pipeline_text(case, s)
    spec = parse_pipeline(yaml.safe_load(text), text)
    result = run_pipeline(ws, spec, Progress(t0))
    if result.model_ref is None:
        raise RuntimeError(f"{case.name}: pipeline ended {result.status}: {result.gate_failures}")
    mv = ws.registry.get_version(result.model_ref)
    variants = {v.name: v for v in mv.variants}
    original = float(mv.metrics["accuracy"])
    dv = ws.data.get(spec.data)
    frame, labels, y = load_labels(ws, spec, dv)
    held_out = prepare(ws, spec, dv, frame, labels, y, spec.features, QuietReporter()).X_test

    sizes: dict[str, Any] = {}
    for runtime in ("tflite", "onnx"):
        f32, int8 = variants.get(f"{runtime}-f32"), variants.get(f"{runtime}-int8")
        if f32 and int8:
            a, b = f32.metrics["size_bytes"], int8.metrics["size_bytes"]
            sizes[runtime] = {"f32": a, "int8": b, "ratio": b / a}
    if "tflite" in sizes:
        sizes["tflite_breakdown"] = {
            n: tflite_breakdown(ws.registry.variant_bytes(mv.ref, f"tflite-{n}"))
            for n in ("f32", "int8")
        }
    if "c-tflm" in variants:
        m = variants["c-tflm"].metrics
        sizes["tflm"] = {"model_bytes": m["model_bytes"], "arena_bytes": m["arena_bytes"]}
    if "c-emlearn" in variants:
        sizes["emlearn_source_bytes"] = variants["c-emlearn"].size
    int8 = {
        n: {
            "accuracy": v.metrics["accuracy"],
            "drop_points": 0.0 - 100.0 * v.metrics["accuracy_delta"],
            "agreement": v.metrics["agreement"],
        }
        for n, v in variants.items()
        if n in ("tflite-int8", "c-tflm", "onnx-int8")
    }
    onnx_method = (
        variants["onnx-int8"].meta["conversion"].get("method") if "onnx-int8" in variants else None
    )
    return {
        "name": case.name,
        "ref": mv.ref,
        "kind": case.kind,
        "params": mv.params,
        "data": dv.ref,
        "inputs": int(held_out.shape[1]),
        "classes": len(mv.labels),
        "test_rows": len(held_out),
        "accuracy": original,
        "sizes": sizes,
        "onnx_int8_method": onnx_method,
        "int8": int8,
        "latency": latency_rows(ws, mv.ref, set(variants), held_out, s),
    }


# -- report ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return _report.machine(
        ("tensorflow-cpu", "tensorflow", "ai-edge-litert", "onnxruntime", "numpy")
    )


def architecture(result: dict[str, Any]) -> str:
    p, n_classes = result["params"], result["classes"]
    if result["kind"] == "keras_mlp":
        return "MLP " + "-".join(map(str, [result["inputs"], *p["hidden"], n_classes]))
    if result["kind"] == "keras_cnn1d":
        return f"1-D CNN, filters {p['filters']}, kernel {p['kernel_size']}, dense {p['dense']}"
    return "scikit-learn MLP " + "-".join(
        map(str, [result["inputs"], *p["hidden_layer_sizes"], n_classes])
    )


def _mark(checks: list[Check], column: str, detail: str) -> str:
    found = [c for c in checks if c.column == column and c.detail == detail]
    return f"{found[0].target_text} {found[0].mark}" if found else ""


def print_case(r: dict[str, Any], checks: list[Check]) -> None:
    params = r["sizes"].get("tflite_breakdown", {}).get("f32", {}).get("params")
    count = f", {params:,} parameters" if params else ""
    print(f"\n== {r['ref']}: {architecture(r)}{count} ==")
    print(
        f"float model accuracy {100 * r['accuracy']:.2f} % on {r['test_rows']} held-out rows "
        f"of {r['data']}"
    )
    print(f"{'size':34}{'f32 B':>10}{'int8 B':>10}{'int8/f32':>10}  target")
    for runtime, label in (("tflite", "TFLite flatbuffer"), ("onnx", "ONNX")):
        if runtime in r["sizes"]:
            z = r["sizes"][runtime]
            print(
                f"  {label:32}{z['f32']:>10,}{z['int8']:>10,}{z['ratio']:>10.3f}  "
                + _mark(checks, f"{runtime} size", "int8/f32 bytes")
            )
    if "tflm" in r["sizes"]:
        t = r["sizes"]["tflm"]
        print(f"  TFLM: model {t['model_bytes']:,} B in flash, tensor arena {t['arena_bytes']:,} B")
    if "tflite_breakdown" in r["sizes"]:
        for name, b in r["sizes"]["tflite_breakdown"].items():
            parts = [f"{b[k]:,} {k[5:]}" for k in sorted(b) if k.startswith("data_")]
            print(
                f"  TFLite {name} bytes: data {' + '.join(parts)}; quant params "
                f"{b['quant_params']:,} ({b['channels']} per-channel entries); names "
                f"{b['names']:,}; rest {b['rest']:,} ({b['tensors']} tensors, {b['ops']} ops)"
            )
    if "emlearn_source_bytes" in r["sizes"]:
        print(f"  emlearn C source: {r['sizes']['emlearn_source_bytes']:,} B of text")
    if r["onnx_int8_method"]:
        print(f"  onnx-int8 made by: {r['onnx_int8_method']}")
    print(
        f"{'int8 accuracy':34}{'acc %':>10}{'drop pts':>10}  {'target':12}{'agreement':>11}  target"
    )
    for variant, m in r["int8"].items():
        print(
            f"  {variant:32}{100 * m['accuracy']:>10.2f}{m['drop_points']:>+10.2f}  "
            f"{_mark(checks, 'accuracy drop', variant):12}{100 * m['agreement']:>10.2f}%  "
            + _mark(checks, "agreement", variant)
        )
    for runtime, rows in r["latency"].items():
        name = "TFLite (ai-edge-litert)" if runtime == "tflite" else "ONNX (onnxruntime)"
        print(f"{'µs per row, ' + name:34}{'f32':>10}{'int8':>10}{'int8/f32':>10}  target")
        for mode, row in rows.items():
            mark = _mark(checks, f"{runtime} latency", mode) or "(diagnostic)"
            print(
                f"  {mode:32}{row['f32_us']:>10.2f}{row['int8_us']:>10.2f}"
                f"{row['ratio']:>10.2f}  {mark}"
            )


SUMMARY_COLUMNS = (
    ("tflite size", None, "TFLite size"),
    ("onnx size", None, "ONNX size"),
    ("accuracy drop", None, "acc drop"),
    ("agreement", None, "agreement"),
    ("tflite latency", "batch 1, runner", "TFLite b1"),
    ("tflite latency", "batch 64, runner", "TFLite b64"),
    ("onnx latency", "batch 1, runner", "ONNX b1"),
    ("onnx latency", "batch 64, runner", "ONNX b64"),
)


def _worst(found: list[Check]) -> Check:
    if found[0].higher_is_better:
        return min(found, key=lambda c: c.value)
    return max(found, key=lambda c: c.value)


def print_summary(checks: list[Check], cases: list[str]) -> None:
    """One line per model; accuracy and agreement are the worst of its int8 variants, latency
    is the runner's time per row in batches of 1 and 64 (the stored single-row p50 is in
    the tables above and is checked too)."""
    print("\n== summary: int8 against f32 (accuracy, agreement: worst int8 variant) ==")
    targets = [
        next(c.target_text for c in checks if c.column == col) for col, _, _ in SUMMARY_COLUMNS
    ]
    print(f"{'model':20}" + "".join(f"{t:>13}" for _, _, t in SUMMARY_COLUMNS))
    print(f"{'target':20}" + "".join(f"{t:>13}" for t in targets))
    for case in cases:
        cells = []
        for column, detail, _ in SUMMARY_COLUMNS:
            found = [
                c
                for c in checks
                if c.case == case and c.column == column and detail in (None, c.detail)
            ]
            if not found:
                cells.append(f"{'-':>13}")
                continue
            worst = _worst(found)
            if column == "agreement":
                value = f"{100 * worst.value:.1f}%"
            else:
                value = f"{worst.value:.3f}" if column.endswith("size") else f"{worst.value:.2f}"
            cells.append(f"{value:>8} {worst.mark}")
        context = " *" if any(c.context for c in checks if c.case == case) else ""
        print(f"{case + context:20}" + "".join(cells))
    core = [c for c in checks if not c.context]
    print(
        f"* context model, not counted. {sum(c.passed for c in core)} of {len(core)} checks "
        f"met on the issue's models ({sum(c.passed for c in checks)} of {len(checks)} in all); "
        "ratios are int8/f32."
    )


def run_all(s: Settings, workspace: Path | None, verbose: bool, t0: float) -> list[dict]:
    """Every case in one new workspace (``workspace``, kept, or a temporary one). Unless
    ``verbose``, C-level logs go to a file next to it, whose tail is shown on an error."""
    with contextlib.ExitStack() as stack:
        if workspace:
            home = workspace.resolve()
        else:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeops-bench-")))
        log = None if verbose else home.parent / f"{home.name}.log"
        try:
            with stderr_to(log):
                ws = prepare_workspace(home, s)
                stack.callback(ws.close)
                results = []
                for case in CASES:
                    print(f"\n-- {case.name}", flush=True)
                    results.append(run_case(ws, case, s, t0))
                return results
        except BaseException:
            if log is not None and log.exists():
                tail = log.read_text(errors="replace").splitlines()[-20:]
                print("\n".join(["last lines of the log:", *tail]), file=sys.stderr)
            raise
        finally:
            if log is not None and not workspace:
                log.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs, rows, repetitions")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--workspace",
        type=Path,
        metavar="DIR",
        help="make the workspace here and keep it (default: a temporary one)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="let TensorFlow and the converters log to stderr"
    )
    args = parser.parse_args(argv)
    s = settings(args.quick)
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc)
    if args.workspace and args.workspace.exists() and any(args.workspace.iterdir()):
        parser.error(f"{args.workspace} is not empty; the benchmark needs a new workspace")
    host = machine()
    print(
        f"edgeops quantization benchmark ({'quick' if s.quick else 'full'}), "
        f"{started:%Y-%m-%d %H:%M} UTC\n{host['cpu']}, {host['cores']} cores, Python "
        f"{host['python']}, "
        + ", ".join(f"{k} {v}" for k, v in host["packages"].items())
        + f"; load average {host['load_average_1min']:.2f} (other work on the machine skews "
        "latency)"
    )
    results = run_all(s, args.workspace, args.verbose, t0)
    contexts = {c.name: c.context for c in CASES}
    checks = [c for r in results for c in checks_of(r, contexts[r["name"]])]
    for r in results:
        print_case(r, [c for c in checks if c.case == r["name"]])
    print_summary(checks, [r["name"] for r in results])
    seconds = time.perf_counter() - t0
    load = os.getloadavg()[0]
    print(f"\nfinished in {seconds:.0f} s; load average {load:.2f}")
    if args.json:
        report = {
            "command": " ".join(["python", "bench/quantization.py", *(argv or sys.argv[1:])]),
            "date": started.isoformat(timespec="seconds"),
            "machine": host,
            "quick": s.quick,
            "settings": asdict(s),
            "targets": TARGETS,
            "results": results,
            "checks": [{**c.__dict__, "passed": c.passed} for c in checks],
            "seconds": seconds,
            "load_average_1min_at_end": load,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    missed = [c for c in checks if not c.passed and not c.context]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
