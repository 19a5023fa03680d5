"""Rollout quality gates: the gate arithmetic on real statistics windows, and end to end on
Mosquitto with simulated agents whose inputs drift, the collector and the controller."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgeops import Workspace
from edgeops.datasets import sensor_windows
from edgeops.errors import InvalidInput
from edgeops.fleet.controller import RolloutController, RolloutOptions
from edgeops.fleet.keys import generate_key
from edgeops.monitoring.drift import drift_report
from edgeops.monitoring.gates import Gate, QualityGates, judge, mean_confidence, measure
from edgeops.mqtt import MqttClient
from edgeops_protocol.baseline import baseline_profile
from edgeops_protocol.stats import WindowStats, merge_windows
from pipeline_kit import trained_workspace

FEATURES = ["a", "b"]
LABELS = ["x", "y"]


def _baseline():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 2))
    p = 1 / (1 + np.exp(-X[:, 0]))
    return baseline_profile(X, np.stack([1 - p, p], 1), FEATURES, LABELS)


def _window(base, n, seed, shift=0.0, errors=0, latency=1.0):
    rng = np.random.default_rng(seed)
    w = WindowStats(base)
    X = rng.normal(size=(n, 2))
    X[:, 1] += shift
    p = 1 / (1 + np.exp(-X[:, 0]))
    for x, pi in zip(X, p, strict=True):
        w.update(x, np.array([1 - pi, pi]), latency_ms=latency)
    for _ in range(errors):
        w.update(np.zeros(2), None, latency_ms=latency, error=True)
    return w.window()


# --- the arithmetic -------------------------------------------------------------------


def test_gates_parse_and_refuse_bad_text():
    g = QualityGates.parse(["error_rate<=0.02", "confidence >= 0.6", "drift_flagged<=0"], 50)
    assert [x.text for x in g.gates] == ["error_rate<=0.02", "confidence>=0.6", "drift_flagged<=0"]
    assert QualityGates.from_dict(g.to_dict()) == g
    assert not QualityGates() and bool(g)
    for bad, says in [
        ("error_rate<0.02", "METRIC<=LIMIT"),
        ("accuracy>=0.9", "unknown gate metric"),
        ("confidence<=0.5", "takes >="),
        ("drift_psi<=nan", "finite"),
        ("p95_latency_ms<=-1", ">= 0"),
    ]:
        with pytest.raises(InvalidInput, match=says):
            Gate.parse(bad)
    with pytest.raises(InvalidInput, match="given twice"):
        QualityGates.parse(["drift_psi<=0.1", "drift_psi<=0.2"])
    with pytest.raises(InvalidInput, match="positive integer"):
        QualityGates.parse(["drift_psi<=0.1"], 0)


def test_measure_equals_the_drift_report_of_the_merged_windows():
    base = _baseline()
    windows = [_window(base, 300, seed=s, errors=3, latency=2.5) for s in (1, 2)]
    m = measure(base, windows)
    merged = merge_windows(windows)
    report = drift_report(base, merged)
    assert m["count"] == 606 == report.count  # errors are predictions too
    assert m["error_rate"] == pytest.approx(6 / 606)
    assert m["p95_latency_ms"] == pytest.approx(report.latency_p95_ms)
    assert m["drift_psi"] == pytest.approx(max(d.psi for d in report.features))
    assert m["drift_flagged"] == 0.0
    # mean confidence: counts at bin midpoints, computed here directly
    edges = np.asarray(base["outputs"]["confidence_edges"])
    mids = np.concatenate([[edges[0]], (edges[:-1] + edges[1:]) / 2, [edges[-1]]])
    c = np.asarray(merged["confidence_counts"], float)
    assert m["confidence"] == pytest.approx(float((c * mids).sum() / c.sum()))
    assert mean_confidence(base, [0] * len(c)) is None


def test_judge_waits_for_enough_predictions_then_fails_on_drift_or_passes():
    base = _baseline()
    gates = QualityGates.parse(["drift_flagged<=0", "error_rate<=0.05"], min_count=500)
    few = judge(gates, {"onnx-int8": (base, [_window(base, 200, 1, shift=2.0)])})
    assert few.ok is None and few.counts == {"onnx-int8": 200}
    drifted = judge(gates, {"onnx-int8": (base, [_window(base, 600, 1, shift=1.0)])})
    assert drifted.ok is False
    assert drifted.values["onnx-int8"]["drift_flagged"] == 1.0
    assert "drift_flagged 1 breaks drift_flagged<=0 over 600 predictions" in drifted.reason
    fine = judge(gates, {"onnx-int8": (base, [_window(base, 600, 1)])})
    assert fine.ok is True and fine.values["onnx-int8"]["error_rate"] == 0.0
    errors = judge(gates, {"onnx-int8": (base, [_window(base, 600, 1, errors=60)])})
    assert errors.ok is False and "error_rate" in errors.reason
    # one variant with too little data holds the verdict back, one failing decides it
    mixed = {"a": (base, [_window(base, 600, 1)]), "b": (base, [_window(base, 10, 2)])}
    assert judge(gates, mixed).ok is None
    assert judge(gates, {}).ok is None


# --- end to end -------------------------------------------------------------------------

N_AGENTS = 6


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return trained_workspace(
        tmp_path_factory.mktemp("gatesws"),
        "mlp",
        {"hidden_layer_sizes": [8]},
        ["onnx-f32"],
        n_per_class=80,
        length=32,
    )


def _rows(seed: int, drift: dict | None) -> list[dict]:
    frame = sensor_windows(n_per_class=100, length=32, seed=seed, drift=drift)
    cols = {a: [f"{a}_{i:03d}" for i in range(32)] for a in ("ax", "ay", "az")}
    return [{a: [float(v) for v in row[c]] for a, c in cols.items()} for _, row in frame.iterrows()]


class Feeder:
    """Sends predictions to every agent that has a model, drifted ones to ``drifting``."""

    def __init__(self, sim, drifting: set[str]) -> None:
        self.sim, self.drifting = sim, drifting
        self.plain, self.drifted = _rows(11, None), _rows(11, {"mean_shift": {"ax": 1.5}})
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        k = 0
        while not self.stop.is_set():
            for i, device in enumerate(self.sim.devices):
                agent = self.sim.agents[i]
                if agent is None or agent.predictor.model is None:
                    continue
                rows = self.drifted if device in self.drifting else self.plain
                at = (k * 20) % (len(rows) - 20)
                agent.predictor.predict_rows(rows[at : at + 20])
            k += 1
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


@pytest.fixture
def loop(models, broker, topic_prefix, tmp_path, monkeypatch):
    """Workspace, controller, a collector thread and six simulated agents on v1."""
    from edgeops.monitoring.collector import Collector, CollectorOptions
    from edgeops.monitoring.ingest import Ingestor
    from edgeops_agent.config import AgentConfig
    from edgeops_agent.sim import SimulatedFleet

    monkeypatch.setenv("EDGEOPS_MQTT_URL", broker.url)
    monkeypatch.setenv("EDGEOPS_FLEET", topic_prefix)
    ws = Workspace.open(models)
    key = generate_key(tmp_path / "keys")
    client = MqttClient(broker.url).connect()
    collector = Collector(
        Ingestor(ws.db, topic_prefix),
        broker.url,
        CollectorOptions(client_id=f"col-{topic_prefix}"[:60], linger=0.02),
    ).start()
    col_thread = threading.Thread(target=collector.run, daemon=True)
    col_thread.start()
    base = AgentConfig(
        device="x",
        fleet=topic_prefix,
        state_dir=tmp_path / "unused",
        public_keys=(key.public,),
        runtimes=("onnxruntime",),
        broker=broker.url,
        hardware="rpi4",
        tags=("sim",),
        telemetry_window_count=100,
        telemetry_window_s=1.0,
    )
    sim = SimulatedFleet(N_AGENTS, base, tmp_path / "sim")
    sim.start()
    ctl = RolloutController(ws, key, client)
    deadline = time.monotonic() + 60
    while True:
        ctl.fleet.sync(client, quiet=0.3)
        if sum(d.online for d in ctl.fleet.devices()) >= N_AGENTS:
            break
        assert time.monotonic() < deadline, "agents did not come online"
    rid = ctl.create("har@1", "tag:sim", RolloutOptions(stages=(1.0,), timeout=60))
    ctl.run(until=lambda: ctl.status(rid)["status"] == "completed", max_seconds=90)
    assert ctl.status(rid)["counts"]["activated"] == N_AGENTS
    yield ws, ctl, sim
    sim.stop()
    collector.stop()
    col_thread.join(30)
    collector.close()
    client.close()
    ws.close()


def _versions(sim) -> dict[str, int]:
    return {d: sim.agents[i].predictor.model.ref()["version"] for i, d in enumerate(sim.devices)}


GATED = {
    "stages": (0.5, 1.0),
    "stage_wait": 2.0,
    "timeout": 60,
    "gates": QualityGates.parse(["drift_flagged<=0", "error_rate<=0.05"], min_count=400),
}


def test_a_canary_whose_inputs_drift_fails_its_gate_and_is_rolled_back(loop):
    _ws, ctl, sim = loop
    canary = set(sorted(sim.devices)[: N_AGENTS // 2])  # the first stage, in plan order
    with Feeder(sim, drifting=canary):
        rid = ctl.create("har@2", "tag:sim", RolloutOptions(**GATED))
        ctl.run(
            until=lambda: ctl.status(rid)["status"] in ("aborted", "completed"),
            max_seconds=120,
        )
    st = ctl.status(rid)
    assert st["status"] == "aborted", st
    assert "soak verdict for stage 0 failed" in st["reason"]
    assert "drift_flagged" in st["reason"]
    [verdict] = st["verdicts"]
    assert verdict["ok"] is False and verdict["stage"] == 0
    assert verdict["counts"]["onnx-f32"] >= 400
    # the canary went back to v1; the rest never left it
    assert {d: x["status"] for d, x in st["devices_detail"].items() if d in canary} == {
        d: "reverted" for d in canary
    }
    assert all(x["status"] == "pending" for d, x in st["devices_detail"].items() if d not in canary)
    assert set(_versions(sim).values()) == {1}


def test_a_canary_within_its_gates_lets_the_rollout_complete(loop):
    _ws, ctl, sim = loop
    with Feeder(sim, drifting=set()):
        rid = ctl.create("har@2", "tag:sim", RolloutOptions(**GATED))
        ctl.run(
            until=lambda: ctl.status(rid)["status"] in ("aborted", "completed"),
            max_seconds=120,
        )
    st = ctl.status(rid)
    assert st["status"] == "completed", st
    [verdict] = st["verdicts"]
    assert verdict["ok"] is True and verdict["values"]["onnx-f32"]["drift_flagged"] == 0.0
    assert verdict["values"]["onnx-f32"]["error_rate"] == 0.0
    assert set(_versions(sim).values()) == {2}
