"""Where alerts come from (SQLite, PostgreSQL): skew observations (agreement with the float
model, on-device accuracy, devices unlike the fleet) and fleet-wide drift over time slices
that merge every device's windows."""

from __future__ import annotations

import numpy as np
import pytest

from edgeops.monitoring.drift import (
    compare_counts,
    detect,
    drift_report,
    reporting_period,
    time_slices,
)
from edgeops.monitoring.service import MonitoringService
from edgeops.monitoring.skew import group_outliers, wilson_interval
from edgeops.store.schema import Sample
from edgeops_protocol.baseline import baseline_profile
from edgeops_protocol.stats import merge_windows
from telemetry_kit import FLOAT_FEATURES as FEATURES
from telemetry_kit import FLOAT_LABELS as LABELS
from telemetry_kit import (
    apply_states,
    float_model,
    model_window,
    register_float_model,
    stored_window,
)

VARIANT = "onnx-f32"


def _register(ws):
    """``m@1``: a real float model (the original) and an ``onnx-f32`` variant with a baseline."""
    return register_float_model(ws, [(VARIANT, b"o" * 100, "onnx", {"accuracy": 0.88})])


def _devices(ws, devices):
    apply_states(ws.db, ws.settings.fleet, {d: ["lab"] for d in devices})


def _clear_inputs(model, n, seed):
    """``n`` inputs whose float scores are clearly on one side (swapping them flips the label)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(4 * n, 3))
    P = model.predict_proba(X)
    keep = np.abs(P[:, 1] - 0.5) > 0.1
    return X[keep][:n], P[keep][:n]


def _add_samples(ws, mv, rows):
    """``rows``: (device, sample id, ts, features, outputs, label)."""

    def write(s):
        for device, sid, ts, features, outputs, label in rows:
            s.add(
                Sample(
                    fleet=ws.settings.fleet,
                    device_id=device,
                    sample_id=sid,
                    model_ref=mv.ref,
                    variant=VARIANT,
                    ts=float(ts),
                    features=[float(x) for x in features],
                    outputs=[float(x) for x in outputs],
                    predicted=LABELS[int(np.argmax(outputs))],
                    label=label,
                )
            )

    ws.db.write(write)


def _window(baseline, model, rng, n, shift=0.0, column=2):
    return model_window(baseline, model.predict_proba, rng, n, shift, column)


def _add_window(ws, mv, device, seq, stats, end, length=60.0):
    def write(s):
        s.add(
            stored_window(ws.settings.fleet, device, seq, mv.ref, VARIANT, stats, end - length, end)
        )

    ws.db.write(write)


def _of(changes, metric, action="open"):
    return {(c.scope, c.subject): c for c in changes if c.metric == metric and c.action == action}


# --- (a) agreement -----------------------------------------------------------------------------


def test_agreement_opens_on_disagreeing_outputs_and_closes_after_two_clean_batches(ws, monkeypatch):
    """Batches of the agreement rule's 100 samples, the newest two per scope and variant.

    d1: 200 samples at ts 1000, 1002, ..., 1398; its newest 20 (ts >= 1360) have their two
    scores swapped, so the float model disagrees. d2: 100 right samples at ts 1201 ... 1399.
    The fleet's newest 100 (ts >= 1300) are 50 of each, with the 20 wrong ones.
    """
    mv, model, _ = _register(ws)
    _devices(ws, ["d1", "d2"])
    X, P = _clear_inputs(model, 700, seed=1)
    rows = []
    for k in range(200):
        out = P[k][::-1] if k >= 180 else P[k]
        rows.append(("d1", f"d1/{k}", 1000 + 2 * k, X[k], out, None))
    for k in range(100):
        rows.append(("d2", f"d2/{k}", 1201 + 2 * k, X[200 + k], P[200 + k], None))
    _add_samples(ws, mv, rows)

    svc = MonitoringService(ws)
    loads = []
    load = MonitoringService._float_model

    def counted(self, mv):
        loads.append(mv.ref)
        return load(self, mv)

    monkeypatch.setattr(MonitoringService, "_float_model", counted)
    obs = [o for o in svc.observations("m@1") if o.metric == "agreement"]
    assert loads == ["m@1"]  # one float model for every scope
    series = {(o.scope, o.at): (o.value, o.samples) for o in obs}
    assert series == {
        ("fleet/onnx-f32", 1299.0): (1.0, 100),
        ("fleet/onnx-f32", 1399.0): (0.8, 100),
        ("device:d1/onnx-f32", 1198.0): (1.0, 100),
        ("device:d1/onnx-f32", 1398.0): (0.8, 100),
        ("device:d2/onnx-f32", 1399.0): (1.0, 100),
    }

    loads.clear()
    opened = _of(svc.evaluate_alerts("m@1"), "agreement")
    assert loads == ["m@1"]
    assert set(opened) == {("fleet/onnx-f32", "outputs"), ("device:d1/onnx-f32", "outputs")}
    d1 = opened[("device:d1/onnx-f32", "outputs")]
    assert (d1.value, d1.samples, d1.threshold, d1.at) == (0.8, 100, 0.97, 1398.0)
    assert (
        d1.reason == "agreement of outputs in device:d1/onnx-f32 is 0.8, below 0.97 (100 samples)"
    )
    rows_open = [a for a in svc.alerts(model="m@1", status="open") if a["metric"] == "agreement"]
    assert sorted((a["scope"], a["value"], a["samples"]) for a in rows_open) == [
        ("device:d1/onnx-f32", 0.8, 100),
        ("fleet/onnx-f32", 0.8, 100),
    ]
    assert svc.evaluate_alerts("m@1") == []  # the same data: no duplicates, nothing closes

    # d1 recovers: one clean batch after the alert opened is not enough (clear_after 2) ...
    X2, P2 = X[300:], P[300:]
    clean = [("d1", f"d1/{200 + k}", 1400 + 2 * k, X2[k], P2[k], None) for k in range(100)]
    _add_samples(ws, mv, clean)
    changes = svc.evaluate_alerts("m@1")
    assert ("device:d1/onnx-f32", "outputs") not in _of(changes, "agreement", "close")
    # ... the second one closes it
    more = [
        ("d1", f"d1/{300 + k}", 1600 + 2 * k, X2[100 + k], P2[100 + k], None) for k in range(100)
    ]
    _add_samples(ws, mv, more)
    closed = _of(svc.evaluate_alerts("m@1"), "agreement", "close")
    assert set(closed) == {("fleet/onnx-f32", "outputs"), ("device:d1/onnx-f32", "outputs")}
    assert closed[("device:d1/onnx-f32", "outputs")].reason == (
        "agreement of outputs in device:d1/onnx-f32 above 0.98 (threshold 0.97) "
        "in the last 2 evaluations: 1, 1"
    )
    assert not [a for a in svc.alerts(model="m@1", status="open") if a["metric"] == "agreement"]


def test_no_float_model_no_agreement_observations(ws):
    blob = b"\0\0\0\0TFL3" + b"x" * 50
    mv = ws.registry.register("t", blob, "tflite", labels=LABELS)
    _devices(ws, ["d1"])
    _add_samples(
        ws, mv, [("d1", f"s{k}", k, [0.1, 0.2, 0.3], [0.4, 0.6], None) for k in range(120)]
    )
    assert MonitoringService(ws).observations("t@1") == []


# --- (b) on-device accuracy --------------------------------------------------------------------


def test_accuracy_shortfall_opens_only_when_devices_are_significantly_worse(ws):
    """Batches of the rule's 50 labelled samples, against the variant's offline 0.88.

    d1: 50 labelled, 30 right (0.60; the Wilson interval's upper end 0.724 is below 0.88).
    d2: 50 labelled, 41 right (0.82: below 0.88, but within noise: upper end 0.902).
    """
    mv, model, _ = _register(ws)
    _devices(ws, ["d1", "d2"])
    X, P = _clear_inputs(model, 100, seed=2)

    def labelled(device, first, right, ts0):
        out = []
        for k in range(50):
            j = first + k
            predicted = LABELS[int(np.argmax(P[j]))]
            label = predicted if k < right else LABELS[1 - LABELS.index(predicted)]
            out.append((device, f"{device}/{k}", ts0 + k, X[j], P[j], label))
        return out

    _add_samples(ws, mv, labelled("d1", 0, 30, 2000) + labelled("d2", 50, 41, 1000))
    svc = MonitoringService(ws)
    obs = {(o.scope, o.at): o for o in svc.observations("m@1") if o.metric == "accuracy_shortfall"}
    assert set(obs) == {
        ("device:d1/onnx-f32", 2049.0),
        ("device:d2/onnx-f32", 1049.0),
        ("fleet/onnx-f32", 1049.0),  # the fleet's 100 labels: two batches of 50
        ("fleet/onnx-f32", 2049.0),
    }
    d1, d2 = obs[("device:d1/onnx-f32", 2049.0)], obs[("device:d2/onnx-f32", 1049.0)]
    assert (d1.subject, d1.samples) == ("labels", 50)
    assert d1.value == pytest.approx(0.88 - wilson_interval(30, 50)[1])
    assert d1.value == pytest.approx(0.88 - 0.7239, abs=1e-4)
    assert d2.value == pytest.approx(0.88 - wilson_interval(41, 50)[1])
    assert d2.value < 0 < 0.88 - 41 / 50  # worse on the point estimate, not significantly

    opened = _of(svc.evaluate_alerts("m@1"), "accuracy_shortfall")
    assert set(opened) == {("device:d1/onnx-f32", "labels"), ("fleet/onnx-f32", "labels")}
    c = opened[("device:d1/onnx-f32", "labels")]
    assert (c.samples, c.threshold, c.at) == (50, 0.0, 2049.0)
    assert c.value == pytest.approx(0.88 - 0.7239, abs=1e-4)
    assert c.reason == (
        "accuracy_shortfall of labels in device:d1/onnx-f32 is 0.1561, above 0 (50 samples)"
    )


# --- (c) devices unlike the fleet --------------------------------------------------------------


def test_one_deviating_device_opens_a_group_alert(ws):
    """Ten devices, two windows of 250 each, ends staggered by a second; odd's input c is
    shifted by 0.8 standard deviations."""
    mv, model, baseline = _register(ws)
    devices = [*(f"w{j}" for j in range(1, 10)), "odd"]
    _devices(ws, devices)
    by_device = {}
    for j, d in enumerate(devices):
        rng = np.random.default_rng(10 + j)
        wins = [_window(baseline, model, rng, 250, 0.8 if d == "odd" else 0.0) for _ in range(2)]
        by_device[d] = wins
        for seq, w in enumerate(wins, start=1):
            _add_window(ws, mv, d, seq, w, 1000.0 + 60 * seq + j)
    svc = MonitoringService(ws)
    obs = [o for o in svc.observations("m@1") if o.metric == "group_p_adjusted"]
    # at each of the two fleet slices: the slice and the one before it, per device
    assert sorted({o.at for o in obs}) == [1069.0, 1129.0]
    latest = {(o.scope, o.subject): o for o in obs if o.at == 1129.0}
    assert len(latest) == 10 * 5  # 3 features, the class, the confidence per device
    direct = group_outliers({d: merge_windows(w) for d, w in by_device.items()}, baseline)
    odd = next(r for r in direct if r.device == "odd")
    c = latest[("device:odd/onnx-f32", "c")]
    assert c.value == odd.p_adjusted[2] == odd.min_p_adjusted and c.samples == 500
    assert c.value < 1e-6

    opened = _of(svc.evaluate_alerts("m@1"), "group_p_adjusted")
    assert set(opened) == {("device:odd/onnx-f32", "c")}
    assert opened[("device:odd/onnx-f32", "c")].value == c.value
    # the fleet's skew report agrees
    outliers = svc.skew("m@1")["outliers"]
    assert [o["device"] for o in outliers if o["outlier"]] == ["odd"]
    assert outliers[0]["p"] == pytest.approx(c.value)


# --- fleet-wide drift ----------------------------------------------------------------------------


@pytest.fixture
def staggered(ws):
    """Three devices sending a window of 300 every 60 s, d1 at :00, d2 at :20, d3 at :40; d1's
    input b is shifted by 1 standard deviation. The last two windows are d2's and d3's."""
    mv, model, baseline = _register(ws)
    _devices(ws, ["d1", "d2", "d3"])
    rng = np.random.default_rng(3)
    wins = {}
    for k in range(1, 5):
        for offset, d in ((0, "d1"), (20, "d2"), (40, "d3")):
            w = _window(baseline, model, rng, 300, 1.0 if d == "d1" else 0.0, column=1)
            wins[(d, k)] = w
            _add_window(ws, mv, d, k, w, 1000.0 + 60 * k + offset)
    return ws, mv, baseline, wins


def test_fleet_drift_is_tested_on_slices_that_merge_every_device(staggered):
    ws, _, baseline, wins = staggered
    svc = MonitoringService(ws)
    obs = svc.observations("m@1", scopes=["fleet"])
    at = {o.at for o in obs}
    assert at == {1100.0, 1160.0, 1220.0, 1280.0}  # one point per slice, at its newest end
    b = {o.metric: o for o in obs if o.subject == "b" and o.at == 1280.0}

    last = merge_windows([wins[(d, 4)] for d in ("d1", "d2", "d3")])
    last_two = merge_windows([wins[(d, k)] for d in ("d1", "d2", "d3") for k in (3, 4)])
    latest, recent = drift_report(baseline, last), drift_report(baseline, last_two)
    assert b["psi"].value == recent.features[1].psi
    assert b["psi"].samples == 1800
    p_rule = min(
        1.0, 2 * min(latest.p_adjusted(latest.features[1]), recent.p_adjusted(recent.features[1]))
    )
    assert b["p_adjusted"].value == p_rule < 0.005
    # what the fleet scope used to test: the last window and the last two, d2's and d3's
    old = detect(baseline, [wins[("d2", 4)], wins[("d3", 4)]], min_count=250)
    assert dict((d.name, p) for d, p in old.p_rule())["b"] > 0.05

    opened = _of(svc.evaluate_alerts("m@1", scopes=["fleet"]), "p_adjusted")
    assert ("fleet/onnx-f32", "b") in opened
    assert opened[("fleet/onnx-f32", "b")].samples == 1800


def test_device_scopes_keep_the_window_rule(staggered):
    ws, _, baseline, wins = staggered
    obs = MonitoringService(ws).observations("m@1", scopes=["device:d3"])
    assert sorted({o.at for o in obs}) == [1100.0, 1160.0, 1220.0, 1280.0]
    p = {o.at: o.value for o in obs if o.subject == "b" and o.metric == "p_adjusted"}
    for k, t in enumerate(sorted(p), start=1):
        det = detect(baseline, [wins[("d3", j)] for j in range(1, k + 1)], min_count=250)
        assert p[t] == dict((d.name, q) for d, q in det.p_rule())["b"]


def test_time_slices_join_cells_until_min_count_and_ignore_who_reported_last():
    recs = [
        {"device": d, "start": t - 60, "end": t, "count": n}
        for d, t0, n in (("a", 0.0, 100), ("b", 20.0, 100), ("c", 45.0, 40))
        for t in (t0 + 60, t0 + 120, t0 + 180, t0 + 240)
    ]
    assert reporting_period(recs) == 60.0
    slices = time_slices(recs, 200)
    # cells of 60 s back from 285: (225, 285], (165, 225], (105, 165], (45, 105]
    assert [[(r["device"], r["end"]) for r in s] for s in slices] == [
        [("a", 60.0), ("b", 80.0), ("c", 105.0)],
        [("a", 120.0), ("b", 140.0), ("c", 165.0)],
        [("a", 180.0), ("b", 200.0), ("c", 225.0)],
        [("a", 240.0), ("b", 260.0), ("c", 285.0)],
    ]
    # 300 predictions a slice is more than one cell holds: two cells a slice, the oldest short
    assert [sum(r["count"] for r in s) for s in time_slices(recs, 300)] == [480, 480]
    sparse = time_slices(recs, 500)
    assert [sum(r["count"] for r in s) for s in sparse] == [240, 720]


def test_a_very_different_device_is_left_out_of_the_others_rest():
    """Three devices, d3's input c shifted by 1.5 sd: against a rest that is half d3, d1 and
    d2 would look unlike it too; once d3 is set aside they are compared with each other."""
    model, X = float_model()
    baseline = baseline_profile(X, model.predict_proba(X), FEATURES, LABELS)
    rng = np.random.default_rng(4)
    wins = {
        d: _window(baseline, model, rng, 600, 1.5 if d == "d3" else 0.0) for d in ("d1", "d2", "d3")
    }
    result = group_outliers(wins, baseline)
    assert [s.device for s in result if s.outlier] == ["d3"]
    assert result[0].device == "d3" and result[0].flagged == ("c",)
    # d3 is judged against d1 and d2 merged, d1 against d2 alone
    family = 3 * 5  # 3 devices x (3 features + classes + confidence), all of the first round
    both = merge_windows([wins["d1"], wins["d2"]])
    c3 = compare_counts("c", "feature", both["features"][2], wins["d3"]["features"][2])
    assert result[0].p_adjusted[2] == min(1.0, c3.chi2.p_value * family)
    d1 = next(s for s in result if s.device == "d1")
    c1 = compare_counts("c", "feature", wins["d2"]["features"][2], wins["d1"]["features"][2])
    assert d1.p_adjusted[2] == min(1.0, c1.chi2.p_value * family) > 0.05
    # without setting d3 aside, d1's rest is half d3: d1 would be flagged on c
    c1_swamped = compare_counts(
        "c",
        "feature",
        merge_windows([wins["d2"], wins["d3"]])["features"][2],
        wins["d1"]["features"][2],
    )
    assert c1_swamped.chi2.p_value * family < 0.005


def test_two_devices_unlike_each_other_are_both_reported():
    model, X = float_model()
    baseline = baseline_profile(X, model.predict_proba(X), FEATURES, LABELS)
    rng = np.random.default_rng(5)
    wins = {"a": _window(baseline, model, rng, 400), "b": _window(baseline, model, rng, 400, 1.5)}
    result = group_outliers(wins, baseline)
    assert sorted(s.device for s in result if s.outlier) == ["a", "b"]
