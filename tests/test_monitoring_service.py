"""Drift reports, the heat map and alert records over stored telemetry (SQLite, PostgreSQL)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeops.monitoring.service import MonitoringService
from edgeops.registry import NewVariant
from edgeops_protocol.baseline import baseline_profile
from telemetry_kit import apply_states, model_window, stored_window

FEATURES = ["a", "b", "c"]
LABELS = ["x", "y"]


def _outputs(X):
    p = 1 / (1 + np.exp(-X[:, 0]))
    return np.stack([1 - p, p], axis=1)


@pytest.fixture
def mon(ws, monkeypatch):
    from sklearn.linear_model import LogisticRegression

    from edgeops.model_io import save_sklearn

    monkeypatch.setenv("EDGEOPS_FLEET", "lab")
    from edgeops import Workspace

    w = Workspace.open(ws.settings.home)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 3))
    baseline = baseline_profile(X, _outputs(X), FEATURES, LABELS)
    blob = save_sklearn(LogisticRegression().fit([[0.0], [1.0]], [0, 1]))
    meta = {"baseline": baseline, "labels": LABELS, "feature_names": FEATURES}
    mv = w.registry.register(
        "m", blob, "skops", variants=[NewVariant("onnx-f32", b"o" * 100, "onnx", {}, meta)]
    )
    apply_states(w.db, "lab", {"d1": ["north"], "d2": ["north"], "d3": ["south"]})
    yield w, mv, baseline, rng
    w.close()


def _window(baseline, rng, n=300, shift=0.0):
    return model_window(baseline, _outputs, rng, n, shift, column=1, latency_ms=0.4)


def _store(w, mv, device, seq, stats, t):
    def write(s):
        s.add(stored_window("lab", device, seq, mv.ref, "onnx-f32", stats, t - 60, t))

    w.db.write(write)


def test_report_flags_the_drifted_feature_only_where_it_drifted(mon):
    w, mv, baseline, rng = mon
    for k in range(4):
        _store(w, mv, "d1", k + 1, _window(baseline, rng, shift=1.0), 1000.0 + k)
        _store(w, mv, "d2", k + 1, _window(baseline, rng), 1000.0 + k)
        _store(w, mv, "d3", k + 1, _window(baseline, rng), 1000.0 + k)
    svc = MonitoringService(w)
    d1 = svc.report("m@1", scope="device:d1")["variants"]["onnx-f32"]
    assert d1["rule"]["flagged"] == ["b"]
    assert d1["report"]["count"] == 1200
    by_name = {f["name"]: f for f in d1["report"]["features"]}
    assert by_name["b"]["psi"] > 0.5 and by_name["a"]["psi"] < 0.05
    assert svc.report("m@1", scope="device:d3")["variants"]["onnx-f32"]["rule"]["flagged"] == []
    south = svc.report("m@1", scope="tag:south")["variants"]["onnx-f32"]
    assert south["devices"] == ["d3"]
    recent = svc.report("m@1", since=1002.0)["variants"]["onnx-f32"]
    assert recent["windows"] == 6  # ends in [1002, ...): two windows of three devices

    heat = svc.timeline("m@1", buckets=4)["variants"]["onnx-f32"]
    assert heat["features"] == FEATURES
    assert len(heat["buckets"]) == 4 and all(len(c["psi"]) == 3 for c in heat["buckets"])


def test_alerts_open_on_drift_and_close_with_hysteresis(mon):
    w, mv, baseline, rng = mon
    svc = MonitoringService(w)
    for k in range(3):
        _store(w, mv, "d1", k + 1, _window(baseline, rng, shift=1.0), 1000.0 + k)
    changes = svc.evaluate_alerts("m@1", scopes=["device:d1"])
    opened = [c for c in changes if c.action == "open"]
    assert {(c.scope, c.subject, c.metric) for c in opened} >= {
        ("device:d1/onnx-f32", "b", "p_adjusted")
    }
    assert all(c.subject == "b" for c in opened if c.metric == "p_adjusted")
    rows = svc.alerts(model="m@1", status="open")
    assert any(r["subject"] == "b" and "below 0.005" in r["reason"] for r in rows)
    assert svc.evaluate_alerts("m@1", scopes=["device:d1"]) == []  # no duplicates
    for k in range(3, 12):  # back to normal for long enough
        _store(w, mv, "d1", k + 1, _window(baseline, rng), 1000.0 + k)
    closed = [c for c in svc.evaluate_alerts("m@1", scopes=["device:d1"]) if c.action == "close"]
    assert any(c.subject == "b" and c.metric == "p_adjusted" for c in closed)
    assert not [
        r
        for r in svc.alerts(model="m@1", status="open")
        if r["subject"] == "b" and r["metric"] == "p_adjusted"
    ]
