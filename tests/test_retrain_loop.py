"""The closed loop end to end on Mosquitto: simulated devices whose inputs drift, the
collector, a drift alert, retraining on fleet samples, challenger against champion, a
canary rollout with quality gates and the alias promoted -- and a challenger that loses."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from edgeops import Workspace
from edgeops.datasets import sensor_windows, write_table
from edgeops.fleet.keys import generate_key
from edgeops.loop import ClosedLoop
from edgeops.pipeline import parse_pipeline
from edgeops.pipeline.run import run_pipeline
from edgeops.retrain import decisions, set_policy
from edgeops.retrain.policy import ALERT_GROUPS
from pipeline_kit import har_pipeline, wrist_features

LENGTH = 32
FEATURES = wrist_features(LENGTH)
PIPELINE = har_pipeline(
    {"kind": "mlp", "params": {"hidden_layer_sizes": [16], "max_iter": 500}, "seed": 0},
    ["onnx-int8"],
    alias="production",
)
SOUTH_DRIFT = {"gain": {"ax": 2.5}}  # a sensor gain error on the south devices
N = 6


def policy(tmp_path, **changes) -> str:
    doc = {
        "model": "har",
        "triggers": {"alerts": ["drift"]},
        "data": {"from_samples": True, "holdout": 0.3, "min_new_samples": 400},
        "action": "canary",
        "promote": "production",
        "cooldown": "10m",
        "rollout": {
            "target": "all",
            "stages": [50, 100],
            "stage_wait": "2s",
            "timeout": "60s",
            "gates": ["error_rate<=0.05"],
            "gate_min_count": 200,
        },
    }
    doc.update(changes)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture
def loop(broker, topic_prefix, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPS_MQTT_URL", broker.url)
    monkeypatch.setenv("EDGEOPS_FLEET", topic_prefix)
    home = tmp_path / "ws"
    ws, _ = Workspace.init(home)
    write_table(sensor_windows(n_per_class=60, length=LENGTH, seed=5), home / "s.csv")
    ws.data.add(home / "s.csv", "sensors")
    ws.features.add(FEATURES)
    text = yaml.safe_dump(PIPELINE)
    assert run_pipeline(ws, parse_pipeline(PIPELINE, text)).model_ref == "har@1"
    key = generate_key(ws.settings.keys_dir)
    lp = ClosedLoop(
        ws,
        broker.url,
        key,
        tmp_path / "fleet",
        devices=N,
        tags=lambda i: ("north",) if i < N // 2 else ("south",),
        window_count=150,
        window_s=1.0,
        length=LENGTH,
    ).start()
    st, _ = lp.rollout("har@1", "all", stages=(1.0,), timeout=60)
    assert st["status"] == "completed" and st["counts"]["activated"] == N
    yield ws, lp
    lp.stop()
    ws.close()


def _south(lp):
    return [d for i, d in enumerate(lp.devices) if i >= N // 2]


def _settled(ws):
    return any(d["status"] in ("done", "promoted", "rolled_back") for d in decisions(ws, "har"))


def test_drift_alert_retrains_and_a_better_challenger_rolls_out(loop, tmp_path):
    ws, lp = loop
    set_policy(ws, policy(tmp_path))
    lp.feed.inject(_south(lp), SOUTH_DRIFT)
    lp.watch(lambda: _settled(ws), timeout=300)

    found = decisions(ws, "har")
    assert len(found) == 1, [(d["trigger"], d["decision"], d["reason"]) for d in found]
    [d] = found
    assert (d["trigger"], d["decision"], d["status"]) == ("alert", "canary", "promoted"), d
    assert d["champion"] == "har@1" and d["challenger"] == "har@2"
    assert d["cause"]["alert_ids"] and d["cause"]["metric"] in ALERT_GROUPS["drift"]
    alert = next(a for a in _alerts(ws) if a["id"] == d["cause"]["alert_ids"][0])
    assert alert["model"] == "har@1" and alert["status"] == "open"
    # the challenger learnt the drifted devices from their own labelled samples
    dv = ws.data.get(d["data"])
    assert dv.ref == "sensors@2" and dv.origin["kind"] == "fleet_samples"
    assert set(dv.origin["devices"]) <= set(lp.devices) and dv.origin["samples"] > 0
    held_out = set(dv.origin["sample_ids"])
    cmp = d["comparison"]["variants"]["onnx-int8"]
    assert cmp["challenger"]["fleet"]["n"] == d["comparison"]["fleet_rows"] > 0
    assert cmp["challenger"]["fleet"]["accuracy"] > cmp["champion"]["fleet"]["accuracy"]
    assert cmp["challenger"]["all"]["accuracy"] > cmp["champion"]["all"]["accuracy"]
    assert held_out  # the held-out samples were not folded into the training data
    # the canary rollout completed under its gate and the alias moved
    st = lp.controller.status(d["rollout"])
    assert st["status"] == "completed" and st["counts"]["activated"] == N
    assert [v["ok"] for v in st["verdicts"]] == [True]
    assert ws.registry.get_version("har@production").ref == "har@2"
    assert set(lp.versions().values()) == {2}
    lin = ws.registry.lineage("har@2")["retraining"]
    assert (lin["champion"], lin["trigger"], lin["decision_id"]) == ("har@1", "alert", d["id"])


def _alerts(ws):
    from edgeops.monitoring.service import MonitoringService

    return MonitoringService(ws).alerts(model="har@1")


def test_a_worse_challenger_is_recorded_and_nothing_is_rolled_out(loop, tmp_path):
    ws, lp = loop
    # new data that makes a worse model: an export whose labels were scrambled
    bad = sensor_windows(n_per_class=60, length=LENGTH, seed=9)
    bad["label"] = np.random.default_rng(0).permutation(bad["label"].to_numpy())
    write_table(bad, tmp_path / "bad.csv")
    ws.data.add(tmp_path / "bad.csv", "sensors", message="an export with scrambled labels")
    set_policy(
        ws, policy(tmp_path, data={"from_samples": False, "holdout": 0.3, "min_new_samples": 400})
    )
    lp.feed.inject(_south(lp), SOUTH_DRIFT)
    lp.watch(lambda: _settled(ws), timeout=300)

    [d] = decisions(ws, "har")
    assert (d["trigger"], d["decision"], d["status"]) == ("alert", "kept_champion", "done"), d
    assert d["challenger"] == "har@2" and d["data"] == "sensors@2" and d["rollout"] is None
    cmp = d["comparison"]["variants"]["onnx-int8"]
    assert cmp["challenger"]["all"]["accuracy"] < cmp["champion"]["all"]["accuracy"]
    assert d["reason"].startswith("champion kept: onnx-int8: ")
    assert len(lp.controller.list()) == 1  # only the first rollout of har@1
    assert ws.registry.get_version("har@production").ref == "har@1"
    assert set(lp.versions().values()) == {1}
