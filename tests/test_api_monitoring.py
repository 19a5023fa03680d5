"""The monitoring API and /metrics on stored telemetry (SQLite and PostgreSQL).

Three devices (d1, d2 tagged north, d3 south) each send four windows of 300 predictions,
counted by the agent's own WindowStats; d3's ``ax_mean`` is shifted by 1.5 standard
deviations. The tests check that what the API returns is what was stored.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import store_snapshot
from edgeops.api import create_app
from edgeops.api import monitoring as monitoring_api
from edgeops.api.metrics import Family, exposition
from edgeops.auth import Role, TokenStore
from edgeops.dashboard.sample_data import (
    FEATURES,
    LABELS,
    VARIANT,
    register_model,
    sample_message,
    state,
    telemetry_message,
    window_stats,
)
from edgeops.monitoring.drift import drift_report
from edgeops.monitoring.ingest import Ingestor
from edgeops.monitoring.store import MonitoringStore
from edgeops_protocol.stats import LATENCY_EDGES_MS, merge_windows

T0 = 1_795_760_000.0
NOW = T0 + 300.0  # what the API's clock says; windows end at T0 + 60 .. T0 + 240
DEVICES = {"d1": "north", "d2": "north", "d3": "south"}
N = 300  # predictions per window


class Fx:
    """The stored fleet and what was stored."""

    def __init__(self, ws, client, model, stats, samples):
        self.ws, self.client, self.model = ws, client, model
        self.stats = stats  # device -> [window stats], oldest first
        self.samples = samples  # sample ids, d1's first
        self.store = MonitoringStore(ws.db, ws.settings.fleet)

    def all_stats(self, devices=DEVICES):
        return [s for d in devices for s in self.stats[d]]


@pytest.fixture
def fx(ws):
    fleet = ws.settings.fleet
    model = register_model(ws, seed=0)
    ws.registry.set_alias(model.ref, "production")
    v1 = model.model_of(1)
    ing = Ingestor(ws.db, fleet)
    ing.ingest(
        state(fleet, d, tags=[tag], model={**v1, "seq": 1}, accepted_seq=1)
        for d, tag in DEVICES.items()
    )
    rng = np.random.default_rng(7)
    stats: dict[str, list[dict]] = {d: [] for d in DEVICES}
    messages = []
    for k in range(1, 5):
        for d in DEVICES:
            shift = {"ax_mean": 1.5} if d == "d3" else None
            s, _ = window_stats(model, rng, N, shift=shift)
            stats[d].append(s)
            messages.append(telemetry_message(fleet, d, k, v1, s, T0 + 60 * k - 60, T0 + 60 * k))
    samples = []
    for seq, (d, x) in enumerate([("d1", 0.5), ("d1", -2.0), ("d2", 1.0)], start=1):
        row = np.full((1, len(FEATURES)), x)
        out = model.predict(row)[0]
        messages.append(sample_message(fleet, d, seq, v1, row[0], out, T0 + seq))
        samples.append(f"{d}/b1/{seq}")
    res = ing.ingest(messages)
    assert (res.accepted["telemetry"], res.accepted["samples"], res.rejected) == (12, 3, {})
    app = create_app(ws)
    app.dependency_overrides[monitoring_api.clock] = lambda: NOW
    token, _ = TokenStore(ws.db).create("api-tests", Role.OPERATOR)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        yield Fx(ws, client, model, stats, samples)


def _get(fx, path, expect=200, **params):
    r = fx.client.get(path, params=params)
    assert r.status_code == expect, r.text
    return r.json()


# --- drift --------------------------------------------------------------------------------


def test_drift_report_per_scope_and_time_range(fx):
    d3 = _get(fx, "/api/models/har/1/drift", scope="device:d3")["variants"][VARIANT]
    assert (d3["windows"], d3["devices"], d3["report"]["count"]) == (4, ["d3"], 4 * N)
    assert "ax_mean" in d3["rule"]["flagged"]
    psi = {f["name"]: f["psi"] for f in d3["report"]["features"]}
    expected = drift_report(fx.model.baseline, merge_windows(fx.stats["d3"]))
    assert psi == pytest.approx({d.name: d.psi for d in expected.features}, rel=1e-12)
    assert psi["ax_mean"] > 0.5 and max(v for k, v in psi.items() if k != "ax_mean") < 0.05

    north = _get(fx, "/api/models/har/production/drift", scope="tag:north")["variants"][VARIANT]
    assert (north["devices"], north["windows"], north["rule"]["flagged"]) == (["d1", "d2"], 8, [])

    fleet = _get(fx, "/api/models/har/1/drift")
    assert (fleet["model"], fleet["scope"], fleet["variants"][VARIANT]["windows"]) == (
        "har@1",
        "fleet",
        12,
    )
    # since/until in Unix seconds or as a duration before the (fixed) clock
    late = _get(fx, "/api/models/har/1/drift", since=str(T0 + 180))
    assert (late["since"], late["variants"][VARIANT]["windows"]) == (T0 + 180, 6)
    assert _get(fx, "/api/models/har/1/drift", since="2m")["since"] == NOW - 120
    early = _get(fx, "/api/models/har/1/drift", until=str(T0 + 180))
    assert early["variants"][VARIANT]["report"]["count"] == 6 * N
    assert _get(fx, "/api/models/har/1/drift", since="1d")["variants"][VARIANT]["windows"] == 12
    assert _get(fx, "/api/models/har/2/drift")["variants"] == {}  # no telemetry of v2

    err = _get(fx, "/api/models/har/1/drift", 422, since="yesterday")
    assert err["error"] == "since 'yesterday' is neither Unix seconds nor a duration like 1h"
    assert _get(fx, "/api/models/har/1/drift", 422, scope="tag:")["kind"] == "InvalidInput"
    assert _get(fx, "/api/models/har/9/drift", 404)["error"] == "model har has no version 9"


def test_timeline_is_the_heat_map(fx):
    heat = _get(fx, "/api/models/har/1/drift/timeline", buckets=4)["variants"][VARIANT]
    assert heat["features"] == list(FEATURES)
    assert [b["count"] for b in heat["buckets"]] == [3 * N] * 4
    j = FEATURES.index("ax_mean")
    for b in heat["buckets"]:  # the drifted feature has the largest PSI in every bucket
        assert len(b["psi"]) == len(FEATURES)
        assert max(range(len(FEATURES)), key=lambda i: b["psi"][i]) == j
    first = merge_windows([fx.stats[d][0] for d in DEVICES])
    expected = [d.psi for d in drift_report(fx.model.baseline, first).features]
    assert heat["buckets"][0]["psi"] == pytest.approx(expected, rel=1e-12)
    one = _get(fx, "/api/models/har/1/drift/timeline", buckets=1, scope="device:d1")
    assert [b["count"] for b in one["variants"][VARIANT]["buckets"]] == [4 * N]
    for bad in (0, 201):
        err = _get(fx, "/api/models/har/1/drift/timeline", 422, buckets=bad)
        assert err["kind"] == "InvalidInput" and "buckets" in err["error"]


def _sum(rows):
    return [int(x) for x in np.sum(np.asarray(rows), axis=0)]


def test_distribution_counts_are_the_stored_counts(fx):
    base = fx.model.baseline
    j = FEATURES.index("ay_mean")
    d = _get(fx, "/api/models/har/1/distribution", feature="ay_mean")
    edges = base["features"][j]["edges"]
    assert (d["model"], d["variant"], d["kind"], d["windows"]) == ("har@1", VARIANT, "feature", 12)
    assert d["features"] == list(FEATURES) and d["edges"] == edges
    assert len(d["bins"]) == len(edges) + 1 and d["bins"][0] == f"< {edges[0]:.4g}"
    assert d["baseline"]["counts"] == base["features"][j]["counts"]
    assert d["live"]["counts"] == _sum([s["features"][j] for s in fx.all_stats()])
    assert d["live"]["total"] == 12 * N
    assert math.fsum(d["live"]["probabilities"]) == pytest.approx(1.0)
    assert d["live"]["probabilities"][3] == d["live"]["counts"][3] / (12 * N)

    default = _get(fx, "/api/models/har/1/distribution")
    assert default["feature"] == FEATURES[0]
    temp = _get(fx, "/api/models/har/1/distribution", feature="temp_c")
    assert len(temp["bins"]) == 8  # whole degrees: fewer distinct quantile edges

    classes = _get(fx, "/api/models/har/1/distribution", feature="outputs", scope="device:d3")
    assert (classes["kind"], classes["bins"], classes["edges"]) == ("classes", list(LABELS), None)
    assert classes["baseline"]["counts"] == base["outputs"]["class_counts"]
    assert classes["live"]["counts"] == _sum([s["class_counts"] for s in fx.stats["d3"]])
    conf = _get(fx, "/api/models/har/1/distribution", feature="confidence", scope="tag:north")
    assert conf["live"]["counts"] == _sum(
        [s["confidence_counts"] for s in fx.all_stats(["d1", "d2"])]
    )
    lat = _get(fx, "/api/models/har/1/distribution", feature="latency", since=str(T0 + 240))
    assert (lat["baseline"], lat["edges"], lat["windows"]) == (None, LATENCY_EDGES_MS, 3)
    assert lat["live"]["counts"] == _sum([fx.stats[d][3]["latency_counts"] for d in DEVICES])

    none = _get(fx, "/api/models/har/2/distribution", feature="ax_mean")
    assert (none["live"], none["windows"]) == (None, 0)
    assert none["baseline"]["counts"] == base["features"][0]["counts"]
    err = _get(fx, "/api/models/har/1/distribution", 404, feature="nope")
    assert err["error"].startswith("har@1 tflite-int8 has no feature 'nope'; use one of ax_mean")
    assert _get(fx, "/api/models/har/1/distribution", 404, variant="onnx-f32")["kind"] == (
        "NotFound"
    )


def test_telemetry_lists_windows_newest_first(fx):
    t = _get(fx, "/api/models/har/production/telemetry", limit=2)
    assert t["model"] == "har@1" and t["total"] == 12
    assert [(w["device"], w["seq"], w["end"], w["count"]) for w in t["windows"]] == [
        ("d3", 4, T0 + 240, N),
        ("d2", 4, T0 + 240, N),
    ]
    d1 = _get(fx, "/api/models/har/1/telemetry", device="d1", until=str(T0 + 120))
    assert [(w["seq"], w["start"], w["errors"]) for w in d1["windows"]] == [(1, T0, 0)]
    assert _get(fx, "/api/models/har/1/telemetry", 422, limit=0)["kind"] == "InvalidInput"


# --- samples and labels -----------------------------------------------------------------------


def test_samples_filter_by_model_device_and_label(fx):
    fx.store.add_label(fx.samples[0], "walk")
    rows = _get(fx, "/api/samples", model="har")
    assert [r["sample_id"] for r in rows] == ["d2/b1/3", "d1/b1/2", "d1/b1/1"]  # newest first
    assert rows[2]["label"] == "walk" and rows[2]["features"] == [0.5] * len(FEATURES)
    assert [r["sample_id"] for r in _get(fx, "/api/samples", labelled="true")] == ["d1/b1/1"]
    assert len(_get(fx, "/api/samples", labelled="false", model="har@production")) == 2
    assert [r["sample_id"] for r in _get(fx, "/api/samples", device="d2")] == ["d2/b1/3"]
    assert _get(fx, "/api/samples", model="har@2") == []


def test_label_post_changes_the_stored_label(fx):
    sid = fx.samples[1]
    r = fx.client.post("/api/labels", json={"sample_id": sid, "label": "run"})
    assert r.status_code == 200 and r.json() == {
        "sample_id": sid,
        "label": "run",
        "status": "added",
    }
    assert fx.store.sample(sid).label == "run"
    r = fx.client.post("/api/labels", json={"sample_id": sid, "label": "run", "device": "d1"})
    assert r.json()["status"] == "unchanged"
    r = fx.client.post("/api/labels", json={"sample_id": sid, "label": "idle"})
    assert r.json()["status"] == "changed" and fx.store.sample(sid).label == "idle"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"label": ""}, 400, "a label must be a printable string of 1-128 characters"),
        ({"label": "x" * 129}, 400, "a label must be a printable string of 1-128 characters"),
        ({"label": "bad\nlabel"}, 400, "a label must be a printable string of 1-128 characters"),
        ({"label": "run", "device": "d2"}, 400, "sample 'd1/b1/1' is not from device 'd2'"),
        ({"sample_id": "d1/b1/99", "label": "run"}, 404, "no sample 'd1/b1/99' in fleet default"),
        ({"label": 3}, 422, "body label: Input should be a valid string"),
        ({"sample_id": None, "label": "run"}, 422, "body sample_id: Input should be a valid"),
    ],
)
def test_bad_labels_and_unknown_samples_leave_the_store_unchanged(fx, body, status, error):
    fx.store.add_label(fx.samples[0], "walk")
    before = store_snapshot(fx.ws)
    r = fx.client.post("/api/labels", json={"sample_id": fx.samples[0], **body})
    assert r.status_code == status
    assert r.json()["error"].startswith(error)
    assert store_snapshot(fx.ws) == before
    assert fx.store.sample(fx.samples[0]).label == "walk"


# --- alerts, counters, overview -----------------------------------------------------------------


def test_alerts_evaluate_and_list(fx):
    r = fx.client.post("/api/models/har/production/alerts/evaluate")
    assert r.status_code == 200
    out = r.json()
    assert out["model"] == "har@1" and out["closed"] == []
    opened = {(a["scope"], a["subject"], a["metric"]) for a in out["opened"]}
    assert ("device:d3/tflite-int8", "ax_mean", "p_adjusted") in opened
    assert not {s for s, _, _ in opened} & {"device:d1/tflite-int8", "device:d2/tflite-int8"}
    rows = _get(fx, "/api/alerts", status="open", model="har@production")
    assert len(rows) == len(out["opened"])
    drift = next(
        a
        for a in rows
        if a["scope"] == "device:d3/tflite-int8"
        and a["metric"] == ("p_adjusted")
        and a["subject"] == "ax_mean"
    )
    assert drift["status"] == "open" and drift["threshold"] == 0.005 and drift["samples"] == 2 * N
    assert "below 0.005" in drift["reason"] and drift["at"] == T0 + 240
    assert len(_get(fx, "/api/alerts", model="har")) == len(rows)
    assert _get(fx, "/api/alerts", model="other") == []
    assert _get(fx, "/api/alerts", status="closed") == []
    assert _get(fx, "/api/alerts", 422, status="bogus")["error"] == (
        "alert status is 'open' or 'closed'"
    )
    again = fx.client.post("/api/models/har/1/alerts/evaluate").json()
    assert (again["opened"], again["closed"]) == ([], [])  # no duplicates


def test_counters_count_rejections(fx):
    fleet = fx.ws.settings.fleet
    Ingestor(fx.ws.db, fleet).ingest(
        [(f"edgeops/{fleet}/devices/d1/telemetry", b"{"), (f"edgeops/{fleet}/devices/d1/x", b"")]
    )
    c = _get(fx, "/api/monitoring/counters")
    assert c == {"fleet": fleet, "rejected": {"malformed": 2}, "total": 2, "windows": 12}


def test_overview_counts_devices_versions_rollouts_and_alerts(fx):
    from edgeops.fleet.controller import RolloutController, RolloutOptions

    fleet = fx.ws.settings.fleet
    Ingestor(fx.ws.db, fleet).ingest([state(fleet, "d2", online=False)])
    o = _get(fx, "/api/overview")
    assert o["fleet"] == fleet
    assert o["devices"] == {"total": 3, "online": 2, "offline": 1}
    assert o["deployed"] == [
        {"model": "har", "version": 1, "ref": "har@1", "devices": 3, "online": 2}
    ]
    assert (o["rollouts"], o["alerts"], o["telemetry"]) == ([], {"open": 0}, {"windows": 12})
    assert [(m["name"], m["latest"], m["aliases"]) for m in o["models"]] == [
        ("har", 2, {"production": 1})
    ]
    rid = RolloutController(fx.ws, key=None).create(
        "har@2", "tag:north", RolloutOptions(stages=(0.5, 1.0))
    )
    fx.client.post("/api/models/har/1/alerts/evaluate")
    o = _get(fx, "/api/overview")
    [r] = o["rollouts"]
    assert (r["id"], r["model"], r["status"], r["devices"], r["activated"], r["progress"]) == (
        rid,
        "har@2",
        "pending",
        2,
        0,
        0.0,
    )
    assert (r["stage"], r["stages"], r["selector"]) == (0, 2, "tag:north")
    assert o["alerts"]["open"] == len(_get(fx, "/api/alerts", status="open"))
    assert o["alerts"]["open"] > 0


# --- /metrics ---------------------------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,?)')
_VALUE = re.compile(r"^(NaN|[+-]Inf|[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)$")


def parse_prometheus(text: str) -> dict[str, dict]:
    """A strict reader of the text format 0.0.4 as /metrics writes it: HELP and TYPE once
    per family and before its samples, every sample of a declared family, labels well
    formed and escaped, no duplicate series, a newline at the end."""
    assert text.endswith("\n") and "\n\n" not in text
    families: dict[str, dict] = {}
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and name not in families, line
            assert "\\" not in help_text.replace("\\\\", "").replace("\\n", ""), line
            families[name] = {"help": help_text, "type": None, "samples": {}}
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert families[name]["type"] is None and not families[name]["samples"], line
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            families[name]["type"] = kind
        else:
            assert not line.startswith("#"), line
            m = _SAMPLE.match(line)
            assert m, line
            name, labels_text, value = m.groups()
            assert families[name]["type"] in ("counter", "gauge"), line
            labels: dict[str, str] = {}
            pos, text_ = 0, labels_text or ""
            while pos < len(text_):
                lm = _LABEL.match(text_, pos)
                assert lm and lm.group(1) not in labels, line
                labels[lm.group(1)] = re.sub(
                    r"\\(.)", lambda e: {"n": "\n"}.get(e.group(1), e.group(1)), lm.group(2)
                )
                pos = lm.end()
                assert lm.group(3) or pos == len(text_), line
            assert _VALUE.match(value), line
            key = tuple(sorted(labels.items()))
            assert key not in families[name]["samples"], line
            families[name]["samples"][key] = float(value)
    return families


def _series(families, name, **labels):
    return families[name]["samples"][tuple(sorted(labels.items()))]


def test_metrics_exposition(fx):
    from edgeops.fleet.controller import RolloutController, RolloutOptions

    fleet = fx.ws.settings.fleet
    Ingestor(fx.ws.db, fleet).ingest(
        [state(fleet, "d3", online=False), (f"edgeops/{fleet}/devices/d1/telemetry", b"[")]
    )
    rid = RolloutController(fx.ws, key=None).create(
        "har@2", "device:d1", RolloutOptions(stages=(1.0,))
    )
    fx.client.post("/api/models/har/1/alerts/evaluate")
    r = fx.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    m = parse_prometheus(r.text)
    assert {n: f["type"] for n, f in m.items()} == {
        "edgeops_devices": "gauge",
        "edgeops_devices_by_model": "gauge",
        "edgeops_rollout_progress": "gauge",
        "edgeops_alerts_open": "gauge",
        "edgeops_drift_psi": "gauge",
        "edgeops_output_drift_psi": "gauge",
        "edgeops_drift_predictions": "gauge",
        "edgeops_telemetry_windows_total": "counter",
        "edgeops_ingest_rejected_total": "counter",
    }
    assert _series(m, "edgeops_devices", fleet=fleet, state="online") == 2
    assert _series(m, "edgeops_devices", fleet=fleet, state="offline") == 1
    assert m["edgeops_devices_by_model"]["samples"] == {
        (("fleet", fleet), ("model", "har"), ("version", "1")): 3
    }
    assert m["edgeops_rollout_progress"]["samples"] == {
        (("fleet", fleet), ("model", "har@2"), ("rollout", rid), ("status", "pending")): 0.0
    }
    alerts = fx.client.get("/api/alerts", params={"status": "open"}).json()
    psi_alerts = sum(1 for a in alerts if a["metric"] == "psi")
    assert _series(m, "edgeops_alerts_open", fleet=fleet, model="har@1", metric="psi") == (
        psi_alerts
    )
    assert sum(m["edgeops_alerts_open"]["samples"].values()) == len(alerts)
    # drift over the windows that ended in the last hour before the clock: all twelve
    expected = drift_report(fx.model.baseline, merge_windows(fx.all_stats()))
    for d in expected.features:
        got = _series(
            m, "edgeops_drift_psi", fleet=fleet, model="har@1", variant=VARIANT, feature=d.name
        )
        assert got == pytest.approx(d.psi, rel=1e-12)
    assert _series(
        m, "edgeops_output_drift_psi", fleet=fleet, model="har@1", variant=VARIANT, output="class"
    ) == pytest.approx(expected.classes.psi, rel=1e-12)
    assert _series(m, "edgeops_drift_predictions", fleet=fleet, model="har@1", variant=VARIANT) == (
        12 * N
    )
    assert _series(m, "edgeops_telemetry_windows_total", fleet=fleet) == 12
    assert _series(m, "edgeops_ingest_rejected_total", fleet=fleet, reason="malformed") == 1

    # an hour and more after the last window there is no drift to show
    fx.client.app.dependency_overrides[monitoring_api.clock] = lambda: T0 + 240 + 3601
    later = parse_prometheus(fx.client.get("/metrics").text)
    assert later["edgeops_drift_psi"]["samples"] == {}
    assert later["edgeops_drift_psi"]["type"] == "gauge"


def test_exposition_escapes_label_values_and_help():
    f = Family("edgeops_test", "gauge", 'Help with a \\ backslash and\na newline "quoted".')
    f.add(1.5, a='say "hi"', b="back\\slash", c="two\nlines")
    f.add(float("nan"), a="x")
    f.add(float("inf"), a="y")
    g = Family("edgeops_empty_total", "counter", "No samples.")
    text = exposition([f, g])
    assert text.splitlines()[0] == (
        '# HELP edgeops_test Help with a \\\\ backslash and\\na newline "quoted".'
    )
    assert 'edgeops_test{a="say \\"hi\\"",b="back\\\\slash",c="two\\nlines"} 1.5' in text
    m = parse_prometheus(text)
    assert _series(m, "edgeops_test", a='say "hi"', b="back\\slash", c="two\nlines") == 1.5
    assert math.isnan(_series(m, "edgeops_test", a="x"))
    assert _series(m, "edgeops_test", a="y") == math.inf
    assert m["edgeops_empty_total"] == {"help": "No samples.", "type": "counter", "samples": {}}


# --- documentation and static files --------------------------------------------------------------


def test_openapi_documents_the_monitoring_routes(fx):
    spec = _get(fx, "/openapi.json")
    routes = {
        ("get", "/api/models/{name}/{ref}/drift"),
        ("get", "/api/models/{name}/{ref}/drift/timeline"),
        ("get", "/api/models/{name}/{ref}/distribution"),
        ("get", "/api/models/{name}/{ref}/telemetry"),
        ("get", "/api/models/{name}/{ref}/skew"),
        ("get", "/api/alerts"),
        ("post", "/api/models/{name}/{ref}/alerts/evaluate"),
        ("get", "/api/samples"),
        ("post", "/api/labels"),
        ("get", "/api/monitoring/counters"),
        ("get", "/api/overview"),
        ("get", "/metrics"),
    }
    for method, path in routes:
        op = spec["paths"][path][method]
        assert op["description"] or op["summary"], path
        for p in op.get("parameters", []):
            if p["in"] == "query":
                assert p.get("description"), (path, p["name"])
    assert "monitoring" in spec["paths"]["/api/overview"]["get"]["tags"]
    timeline = spec["paths"]["/api/models/{name}/{ref}/drift/timeline"]["get"]
    buckets = next(p for p in timeline["parameters"] if p["name"] == "buckets")
    assert (buckets["schema"]["minimum"], buckets["schema"]["maximum"]) == (1, 200)
    assert "/" not in spec["paths"]  # the page itself is not an API route


def test_the_page_and_its_assets_are_served_with_a_strict_policy(fx):
    r = fx.client.get("/")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert '<script src="static/dashboard.js" defer></script>' in r.text
    assert (
        fx.client.get("/static/dashboard.js").headers["content-type"].startswith("text/javascript")
    )
    assert fx.client.get("/static/dashboard.css").status_code == 200
    for name in ("sample_data.py", "__init__.py", "..%2Fapi%2Fapp.py"):
        assert fx.client.get(f"/static/{name}").status_code == 404


# --- skew (last: it rests on the most machinery) -------------------------------------------------


def test_skew_reports_agreement_accuracy_and_outliers(fx):
    fx.store.add_label(
        fx.samples[0], LABELS[int(np.argmax(fx.model.predict(np.full((1, 6), 0.5))))]
    )
    k = _get(fx, "/api/models/har/production/skew")
    assert (k["model"], k["scope"]) == ("har@1", "fleet")
    assert (k["agreement"]["overall"]["n"], k["agreement"]["overall"]["agreeing"]) == (3, 3)
    assert (k["accuracy"]["labelled"], k["accuracy"]["overall"]["correct"]) == (1, 1)
    flagged = [o["device"] for o in k["outliers"] if o["outlier"]]
    assert "d3" in flagged
    north = _get(fx, "/api/models/har/1/skew", scope="tag:north", since=str(T0 + 2.5))
    assert north["agreement"]["overall"]["n"] == 1  # d2's sample, ts T0 + 3
    assert north["accuracy"] is None
    assert _get(fx, "/api/models/har/1/skew", 422, limit=0)["kind"] == "InvalidInput"
