"""Production skew over the stores (SQLite, PostgreSQL): samples re-run through the registered
float model, on-device accuracy against offline, devices unlike their group; and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeops.monitoring.service import MonitoringService
from edgeops.monitoring.skew import wilson_interval
from edgeops.store.schema import Sample
from telemetry_kit import FLOAT_LABELS as LABELS
from telemetry_kit import apply_states, model_window, register_float_model, stored_window

TAGS = {"d1": ["north"], "d2": ["north"], "d3": ["south"]}
WINDOW_DEVICES = [*(f"w{j}" for j in range(1, 10)), "odd"]


def _register(ws):
    return register_float_model(
        ws,
        [
            ("onnx-f32", b"o" * 100, "onnx", {"accuracy": 0.88, "agreement": 1.0}),
            ("tflite-int8", b"\0\0\0\0TFL3" * 10, "tflite", {}),
        ],
    )


def _devices(ws, devices):
    apply_states(ws.db, ws.settings.fleet, {d: TAGS.get(d, ["windows"]) for d in devices})


def _add_samples(ws, mv, rows):
    """``rows``: (device, variant, features, outputs, predicted, label) in device-time order."""

    def write(s):
        for k, (device, variant, features, outputs, predicted, label) in enumerate(rows):
            s.add(
                Sample(
                    fleet=ws.settings.fleet,
                    device_id=device,
                    sample_id=f"{device}/b/{k}",
                    model_ref=mv.ref,
                    variant=variant,
                    ts=1000.0 + k,
                    features=[float(x) for x in features],
                    outputs=[float(x) for x in outputs],
                    predicted=predicted,
                    label=label,
                )
            )

    ws.db.write(write)


def _add_windows(ws, mv, baseline, model, device, shift=0.0, windows=2, n=250, seed=0):
    rng = np.random.default_rng(seed)

    def write(s):
        for seq in range(1, windows + 1):
            w = model_window(baseline, model.predict_proba, rng, n, shift)
            start, end = 1000.0 + 60 * seq, 1060.0 + 60 * seq
            s.add(stored_window(ws.settings.fleet, device, seq, mv.ref, "onnx-f32", w, start, end))

    ws.db.write(write)


def _populate(ws):
    """The known skew: see the counts asserted in the tests below.

    * d1 (onnx-f32): 80 samples, the first 20 with their two scores swapped (wrong);
      60 labelled, 42 of them right.
    * d2 (tflite-int8): 6 samples with scores rounded to 2 decimals, all labelled right;
      2 with one sigmoid score; all agree.
    * d3 (onnx-f32): 3 samples with 2 features instead of 3: unusable.
    * w1..w9 and odd: windows only; odd's input c is shifted by 0.8 standard deviations.
    """
    mv, model, baseline = _register(ws)
    _devices(ws, [*TAGS, *WINDOW_DEVICES])
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    P = model.predict_proba(X)
    clear = np.abs(P[:, 1] - 0.5) > 0.05  # rounding cannot flip these
    X, P = X[clear], P[clear]
    rows = []
    for k in range(80):
        out = P[k][::-1] if k < 20 else P[k]
        predicted = LABELS[int(np.argmax(out))]
        label = None
        if k >= 20:
            right = k < 20 + 42
            label = predicted if right else LABELS[1 - LABELS.index(predicted)]
        rows.append(("d1", "onnx-f32", X[k], out, predicted, label))
    for k in range(80, 86):
        predicted = LABELS[int(np.argmax(P[k]))]
        rows.append(("d2", "tflite-int8", X[k], np.round(P[k], 2), predicted, predicted))
    for k in range(86, 88):
        rows.append(("d2", "tflite-int8", X[k], [P[k][1]], LABELS[int(P[k][1] >= 0.5)], None))
    for k in range(88, 91):
        rows.append(("d3", "onnx-f32", X[k][:2], P[k], LABELS[int(np.argmax(P[k]))], None))
    _add_samples(ws, mv, rows)
    for j, d in enumerate(WINDOW_DEVICES):
        _add_windows(ws, mv, baseline, model, d, shift=0.8 if d == "odd" else 0.0, seed=10 + j)
    return mv, model, X, P


def test_agreement_counts_the_wrong_outputs_and_the_unusable_samples(ws):
    _, _, _, P = _populate(ws)
    out = MonitoringService(ws).skew("m@1")
    assert (out["model"], out["scope"]) == ("m@1", "fleet")
    json.dumps(out, allow_nan=False)
    a = out["agreement"]
    assert a["float_model"] == {"format": "skops", "kind": None}
    assert (a["samples"], a["inputs"], a["unusable"]) == (91, 3, 3)
    overall = a["overall"]
    assert (overall["n"], overall["agreeing"], overall["non_finite"]) == (88, 68, 0)
    assert overall["rate"] == pytest.approx(68 / 88)
    assert overall["ci95"] == pytest.approx(list(wilson_interval(68, 88)))
    onnx, tfl = a["variants"]["onnx-f32"], a["variants"]["tflite-int8"]
    assert (onnx["n"], onnx["agreeing"], onnx["unusable"]) == (80, 60, 3)
    assert onnx["offline_agreement"] == 1.0 and tfl["offline_agreement"] is None
    assert (tfl["n"], tfl["agreeing"], tfl["unusable"]) == (8, 8, 0)
    # the rounded scores differ from the float model's by exactly the rounding
    rounded = np.abs(np.round(P[80:86], 2) - P[80:86])
    assert a["devices"]["d2"]["mean_abs_diff"] == pytest.approx(
        (rounded.sum() + 0.0) / (2 * 8), abs=1e-6
    )
    # swapped scores: |p1 - p0| on both columns for the 20 wrong rows of d1
    swapped = np.abs(P[:20, 0] - P[:20, 1])
    assert a["devices"]["d1"]["max_abs_diff"] == pytest.approx(swapped.max(), abs=1e-6)
    assert a["devices"]["d1"]["mean_abs_diff"] == pytest.approx(swapped.sum() / 80, abs=1e-6)
    assert (a["devices"]["d3"]["n"], a["devices"]["d3"]["unusable"]) == (0, 3)
    assert out["reasons"]["agreement"] is None

    south = MonitoringService(ws).skew("m@1", scope="tag:south")["agreement"]
    assert (south["samples"], south["overall"]["n"], south["unusable"]) == (3, 0, 3)
    assert south["overall"]["rate"] is None
    newest = MonitoringService(ws).skew("m@1", limit=10, since=1080.0)["agreement"]
    # the 11 samples at ts >= 1080 are d2's and d3's; the 10 newest leave one of d2's out
    assert (newest["samples"], newest["unusable"], newest["overall"]["n"]) == (10, 3, 7)


def test_on_device_accuracy_against_the_offline_accuracy(ws):
    _populate(ws)
    acc = MonitoringService(ws).skew("m@1")["accuracy"]
    assert acc["labelled"] == 66
    overall = acc["overall"]
    assert (overall["labelled"], overall["correct"]) == (66, 48)
    # two variants labelled: against the version's 0.9
    assert overall["offline_accuracy"] == 0.9
    assert overall["ci"] == pytest.approx([0.6096, 0.8200], abs=1e-4)
    assert overall["outside"] is True and overall["direction"] == "worse"
    onnx = acc["variants"]["onnx-f32"]  # the variant's own offline accuracy
    assert (onnx["labelled"], onnx["correct"], onnx["offline_accuracy"]) == (60, 42, 0.88)
    assert onnx["ci"] == pytest.approx(list(wilson_interval(42, 60)))
    assert onnx["ci"] == pytest.approx([0.5749, 0.8010], abs=1e-4)
    assert onnx["direction"] == "worse" and onnx["shortfall"] == pytest.approx(
        0.88 - 0.8010, abs=1e-4
    )
    tfl = acc["variants"]["tflite-int8"]  # no accuracy of its own: the version's
    assert (tfl["labelled"], tfl["correct"], tfl["offline_accuracy"]) == (6, 6, 0.9)
    assert tfl["outside"] is False and tfl["direction"] is None
    assert acc["devices"]["d2"] == tfl and "d3" not in acc["devices"]

    none = MonitoringService(ws).skew("m@1", scope="device:d3")
    assert none["accuracy"] is None and "no labelled samples" in none["reasons"]["accuracy"]


def test_the_device_with_shifted_inputs_is_the_outlier(ws):
    _populate(ws)
    svc = MonitoringService(ws)
    outliers = svc.skew("m@1")["outliers"]
    assert sorted(o["device"] for o in outliers) == sorted(WINDOW_DEVICES)
    assert [o["device"] for o in outliers if o["outlier"]] == ["odd"]
    odd = outliers[0]
    assert (odd["device"], odd["variant"], odd["samples"]) == ("odd", "onnx-f32", 500)
    assert odd["flagged"] == ["c"] and odd["p"] < 1e-6 and odd["psi"]["c"] > 0.2
    assert all(o["flagged"] == [] and o["p"] > 0.05 for o in outliers[1:])

    # one device is no group
    one = svc.skew("m@1", scope="device:odd")
    assert one["outliers"] == [] and "fewer than two devices" in one["reasons"]["outliers"]
    assert one["agreement"] is None and "no samples" in one["reasons"]["agreement"]


def test_a_version_without_a_float_model_has_no_agreement(ws):
    blob = b"\0\0\0\0TFL3" + b"x" * 50
    mv = ws.registry.register("t", blob, "tflite", labels=LABELS)
    _add_samples(ws, mv, [("d1", "original", [0.1, 0.2, 0.3], [0.4, 0.6], "y", "y")])
    out = MonitoringService(ws).skew("t@1")
    assert out["agreement"] is None
    assert "no float model" in out["reasons"]["agreement"]
    # no offline accuracy recorded: the devices' side only
    acc = out["accuracy"]["overall"]
    assert (acc["labelled"], acc["correct"], acc["offline_accuracy"], acc["outside"]) == (
        1,
        1,
        None,
        None,
    )
    assert out["outliers"] == [] and "no variant with a baseline" in out["reasons"]["outliers"]


def test_pipeline_version_through_its_onnx_variant(ws):
    """A version trained by `edgeops train`: its kind comes from the variant meta."""
    import yaml

    from edgeops.datasets import sensor_windows, write_table
    from edgeops.pipeline import parse_pipeline
    from edgeops.pipeline.run import QuietReporter, run_pipeline
    from edgeops_agent.runtime import load_runner
    from edgeops_protocol.features import FittedFeatures

    home = ws.settings.home
    frame = sensor_windows(n_per_class=60, seed=0)
    write_table(frame, home / "sensors.csv")
    ws.data.add(home / "sensors.csv", "sensors")
    axes = ("ax", "ay", "az")
    ws.features.add(
        {
            "name": "wrist",
            "inputs": [{"name": a, "kind": "window", "length": 64} for a in axes],
            "steps": [*({"op": "window_stats", "input": a} for a in axes), {"op": "scale"}],
        }
    )
    doc = {
        "name": "har",
        "data": "sensors@1",
        "label": "label",
        "features": "wrist@1",
        "model": {"kind": "logistic_regression"},
        "export": ["onnx-f32"],
    }
    text = yaml.safe_dump(doc)
    result = run_pipeline(ws, parse_pipeline(yaml.safe_load(text), text), QuietReporter())
    assert result.status == "registered"
    mv = ws.registry.get_version(result.model_ref)
    meta = ws.registry.variant(mv.ref, "onnx-f32").meta
    X = FittedFeatures.from_dict(meta["features"]).transform_rows(frame.head(20).to_dict("records"))
    scores = load_runner("onnx", ws.registry.variant_bytes(mv.ref, "onnx-f32")).predict(X)
    labels = meta["labels"]
    _add_samples(
        ws,
        mv,
        [
            ("d1", "onnx-f32", x, s, labels[int(np.argmax(s))], None)
            for x, s in zip(X, scores, strict=True)
        ],
    )
    a = MonitoringService(ws).skew(mv.ref)["agreement"]
    assert a["float_model"] == {"format": "skops", "kind": "logistic_regression"}
    assert (a["overall"]["n"], a["overall"]["agreeing"], a["unusable"]) == (20, 20, 0)
    assert a["inputs"] == X.shape[1] and a["overall"]["max_abs_diff"] < 1e-5


def test_limit_must_be_positive(ws):
    from edgeops.errors import InvalidInput

    _register(ws)
    with pytest.raises(InvalidInput, match="limit"):
        MonitoringService(ws).skew("m@1", limit=0)


# --- the CLI ----------------------------------------------------------------------------------


def test_drift_skew_cli_tables_and_json(tmp_path, monkeypatch):
    from edgeops import Workspace
    from edgeops.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["init", str(tmp_path / "w")]).exit_code == 0
    monkeypatch.chdir(tmp_path / "w")
    ws = Workspace.open(tmp_path / "w")
    try:
        _populate(ws)
    finally:
        ws.close()

    result = runner.invoke(app, ["drift", "skew", "m@1", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert (out["agreement"]["overall"]["agreeing"], out["accuracy"]["labelled"]) == (68, 66)

    result = runner.invoke(app, ["drift", "skew", "m@1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()

    def row(first, after=""):
        start = next(k for k, ln in enumerate(lines) if after in ln) if after else 0
        cells = next(ln for ln in lines[start:] if ln.startswith(f"│ {first} "))
        return [c.strip() for c in cells.strip("│").split("│")]

    assert "m@1 in fleet: agreement with the float model" in lines[0]
    assert row("all") == ["all", "88", "68", "0.773", "0.67-0.85", "0.1906", "0", "3"]
    assert row("d3")[1:3] == ["0", "0"] and row("d3")[-1] == "3"
    assert "91 samples (the newest, 1000 at most)" in result.output
    accuracy = "on-device accuracy against offline"
    assert row("all", accuracy) == ["all", "66", "48", "0.727", "0.61-0.82", "0.900", "WORSE"]
    assert row("onnx-f32", accuracy)[1:] == ["60", "42", "0.700", "0.57-0.80", "0.880", "WORSE"]
    assert row("odd") == ["odd", "onnx-f32", "500", "6.3e-59", "c"]
    assert row("w7")[-1] == ""

    north = runner.invoke(app, ["drift", "skew", "m@1", "--tag", "north", "--since", "1h"])
    assert north.exit_code == 0, north.output
    assert "no samples of m@1 in scope" in north.output  # ts 1000 is long ago

    bad = runner.invoke(app, ["drift", "skew", "m@1", "--device", "d1", "--tag", "north"])
    assert bad.exit_code == 2 and "give --device or --tag" in bad.output
    missing = runner.invoke(app, ["drift", "skew", "nope@1"])
    assert missing.exit_code == 3
    assert missing.output.strip() == "error: no model named 'nope'; see `edgeops models list`"
