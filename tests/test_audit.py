"""The audit log on a real store (SQLite and PostgreSQL): alias moves, rollouts and their
requests, signing keys and retraining decisions are recorded with who did them, in the
transaction of the change; ``edgeops audit list`` and ``GET /api/audit`` read them."""

from __future__ import annotations

import json

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from edgeops import audit
from edgeops.api import create_app
from edgeops.auth import Role, TokenStore
from edgeops.cli import app as cli
from edgeops.dashboard.sample_data import register_model, state
from edgeops.errors import Conflict, NotFound
from edgeops.fleet.controller import RolloutController, RolloutOptions
from edgeops.fleet.keys import generate_key
from edgeops.monitoring.ingest import Ingestor


def _entries(ws, action=None):
    return [
        (e["actor"], e["action"], e["subject"], e["details"])
        for e in reversed(audit.entries(ws.db, limit=1000, action=action))
    ]


def test_alias_moves_are_recorded_with_the_cli_user_or_the_acting_name(ws):
    from sklearn.linear_model import LogisticRegression

    from edgeops.model_io import save_sklearn

    blob = save_sklearn(LogisticRegression().fit([[0.0], [1.0]], [0, 1]))
    ws.registry.register("m", blob, "skops")
    ws.registry.register("m", blob, "skops")
    ws.registry.set_alias("m@1", "production")
    with audit.acting_as("grafana-bot"):
        ws.registry.set_alias("m@2", "production")
    with pytest.raises(Conflict):  # already there: nothing moves, nothing is recorded
        ws.registry.set_alias("m@2", "production")
    assert _entries(ws) == [
        ("tester", "alias.move", "m@production", {"from": None, "to": 1}),
        ("grafana-bot", "alias.move", "m@production", {"from": 1, "to": 2}),
    ]
    assert audit.actor() == "tester"  # acting_as ends with its block


def test_rollout_create_and_every_request_are_recorded(ws):
    fleet = ws.settings.fleet
    model = register_model(ws, versions=2, seed=0)
    Ingestor(ws.db, fleet).ingest(
        state(fleet, d, tags=["lab"], model={**model.model_of(1), "seq": 1}, accepted_seq=1)
        for d in ("pi-01", "pi-02")
    )
    key = generate_key(ws.settings.keys_dir)
    ctl = RolloutController(ws, key)
    rid = ctl.create("har@2", "tag:lab", RolloutOptions(stages=(0.5, 1.0)))
    ctl.request(rid, "pause", "battery check")
    ctl.request(rid, "resume")
    with audit.acting_as("ops-token"):
        ctl.request(rid, "abort", "drain")
    with pytest.raises(NotFound):  # no rollout: nothing recorded
        ctl.request("r-00000000", "pause")
    assert _entries(ws, action="rollout") == [
        (
            "tester",
            "rollout.create",
            rid,
            {"model": "har@2", "selector": "tag:lab", "devices": 2, "stages": [0.5, 1.0]},
        ),
        ("tester", "rollout.pause", rid, {"reason": "battery check"}),
        ("tester", "rollout.resume", rid, {"reason": ""}),
        ("ops-token", "rollout.abort", rid, {"reason": "drain"}),
    ]
    [generated] = _entries(ws, action="key.generate")
    assert generated == (
        "tester",
        "key.generate",
        key.key_id,
        {"public_key": key.public_b64, "force": False},
    )


def test_key_generation_outside_a_workspace_records_nothing(ws, tmp_path):
    generate_key(tmp_path / "keys")
    assert _entries(ws) == []
    key = generate_key(ws.settings.keys_dir)
    key2 = generate_key(ws.settings.keys_dir, force=True)
    assert [(a, s, d["force"]) for _, a, s, d in _entries(ws)] == [
        ("key.generate", key.key_id, False),
        ("key.generate", key2.key_id, True),
    ]


def test_retraining_decisions_are_recorded(ws, tmp_path, monkeypatch):
    from edgeops.datasets import sensor_windows, write_table
    from edgeops.pipeline import parse_pipeline
    from edgeops.pipeline.run import run_pipeline
    from edgeops.retrain import Trigger, parse_policy, retrain

    length = 16
    axes = ("ax", "ay", "az")
    features = {
        "name": "wrist",
        "inputs": [{"name": a, "kind": "window", "length": length} for a in axes],
        "steps": [*({"op": "window_stats", "input": a} for a in axes), {"op": "scale"}],
    }
    pipeline = {
        "name": "har",
        "data": "sensors@1",
        "label": "label",
        "features": "wrist@1",
        "model": {"kind": "logistic_regression", "params": {"max_iter": 500}, "seed": 0},
        "export": ["onnx-f32"],
        "alias": "production",
    }
    write_table(sensor_windows(n_per_class=6, length=length, seed=5), tmp_path / "s.csv")
    ws.data.add(tmp_path / "s.csv", "sensors")
    ws.features.add(features)
    run_pipeline(ws, parse_pipeline(pipeline, yaml.safe_dump(pipeline)))
    write_table(sensor_windows(n_per_class=80, length=length, seed=6), tmp_path / "s2.csv")
    ws.data.add(tmp_path / "s2.csv", "sensors")
    monkeypatch.setenv("EDGEOPS_USER", "retrain-watcher")
    d = retrain(ws, parse_policy({"model": "har", "action": "register"}), Trigger("manual", "x"))
    assert (d["decision"], d["challenger"]) == ("registered", "har@2")
    assert _entries(ws) == [
        ("tester", "alias.move", "har@production", {"from": None, "to": 1}),
        ("retrain-watcher", "alias.move", "har@production", {"from": 1, "to": 2}),
        (
            "retrain-watcher",
            "retrain.decision",
            "har",
            {
                "id": d["id"],
                "trigger": "manual",
                "decision": "registered",
                "status": "done",
                "champion": "har@1",
                "challenger": "har@2",
                "rollout": None,
                "reason": d["reason"],
            },
        ),
    ]


def test_cli_and_api_read_the_log(ws):
    from sklearn.linear_model import LogisticRegression

    from edgeops.model_io import save_sklearn

    blob = save_sklearn(LogisticRegression().fit([[0.0], [1.0]], [0, 1]))
    ws.registry.register("m", blob, "skops")
    ws.registry.set_alias("m@1", "production")
    admin, _ = TokenStore(ws.db).create("root-token", Role.ADMIN)
    runner = CliRunner()
    home = ["-w", str(ws.settings.home)]
    r = runner.invoke(cli, [*home, "audit", "list", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [(e["actor"], e["action"], e["subject"]) for e in rows] == [
        ("tester", "token.create", "root-token"),
        ("tester", "alias.move", "m@production"),
    ]
    assert rows[0]["details"] == {"role": "admin", "expires_at": None}
    r = runner.invoke(cli, [*home, "audit", "list", "--json", "--limit", "1", "--action", "alias"])
    assert [e["subject"] for e in json.loads(r.output)] == ["m@production"]
    r = runner.invoke(cli, [*home, "audit", "list"])
    assert r.exit_code == 0 and "alias.move" in r.output and "token.create" in r.output

    with TestClient(create_app(ws), headers={"Authorization": f"Bearer {admin}"}) as client:
        got = client.get("/api/audit", params={"action": "alias.move"})
        assert got.status_code == 200
        [entry] = got.json()
        assert (entry["actor"], entry["subject"], entry["details"]) == (
            "tester",
            "m@production",
            {"from": None, "to": 1},
        )
        assert [e["action"] for e in client.get("/api/audit").json()] == [
            "token.create",
            "alias.move",
        ]
        assert client.get("/api/audit", params={"limit": 0}).status_code == 422
