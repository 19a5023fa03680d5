"""Retraining policies, triggers and decisions on a real store (SQLite and PostgreSQL);
the whole loop on MQTT is in test_retrain_loop.py."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from typer.testing import CliRunner

from edgeops.cli import app
from edgeops.datasets import sensor_windows, write_table
from edgeops.errors import InvalidInput, NotFound
from edgeops.pipeline import parse_pipeline
from edgeops.pipeline.run import run_pipeline
from edgeops.retrain import Trigger, check_triggers, decisions, parse_policy, retrain, set_policy
from edgeops.retrain.run import holdout_ids
from pipeline_kit import har_pipeline, wrist_features

LENGTH = 16
FEATURES = wrist_features(LENGTH)
PIPELINE = har_pipeline(
    {"kind": "logistic_regression", "params": {"max_iter": 500}, "seed": 0},
    ["onnx-f32"],
    alias="production",
)


def test_policy_defaults_and_every_field():
    p = parse_policy({"model": "har"})
    assert (p.champion, p.action, p.promote, p.cooldown, p.triggers()) == (
        "production",
        "canary",
        "production",
        600.0,
        [],
    )
    full = parse_policy(
        {
            "model": "har",
            "triggers": {
                "alerts": ["drift", "agreement"],
                "new_data": True,
                "labelled_samples": 50,
                "every": "2h",
            },
            "data": {"from_samples": False, "holdout": 0.2, "min_new_samples": 10},
            "evaluation": {"min_improvement": 0.01},
            "action": "register",
            "promote": None,
            "cooldown": "30s",
            "rollout": {"stages": [10, 50, 100], "gates": ["error_rate<=0.1"]},
        }
    )
    assert full.alert_metrics == ("p_adjusted", "psi", "agreement")
    assert (full.every, full.cooldown, full.min_new_samples) == (7200.0, 30.0, 10)
    assert full.rollout.stages == (0.1, 0.5, 1.0) and full.promote is None


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({}, "'model' must name the model"),
        ({"model": "har", "trigger": {}}, "unknown key 'trigger'"),
        ({"model": "har", "triggers": {"alerts": ["weather"]}}, "unknown 'weather'"),
        ({"model": "har", "triggers": {"every": "soon"}}, "not a duration"),
        ({"model": "har", "action": "deploy"}, "register or canary"),
        ({"model": "har", "data": {"holdout": 1.5}}, "data.holdout"),
        ({"model": "har", "rollout": {"stages": [50, 20]}}, "rising percentages"),
        ({"model": "har", "rollout": {"gates": ["accuracy>=1"]}}, "unknown gate metric"),
        ({"model": "har", "triggers": {"labelled_samples": -1}}, "integer >= 0"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_policies_are_refused_with_the_field_named(doc, says):
    with pytest.raises(InvalidInput, match=says):
        parse_policy(doc)


def test_holdout_is_a_stable_share_of_the_sample_ids():
    ids = [f"dev-{i % 7}/boot/{i}" for i in range(2000)]
    held = holdout_ids(ids, 0.3)
    assert held == holdout_ids(list(reversed(ids)), 0.3)  # by id, not by position
    assert 540 <= len(held) <= 660
    assert holdout_ids(ids, 0.0) == set()


@pytest.fixture
def har(ws, tmp_path):
    """``har@1`` (production) trained by the pipeline on a small data set."""
    write_table(sensor_windows(n_per_class=6, length=LENGTH, seed=5), tmp_path / "s.csv")
    ws.data.add(tmp_path / "s.csv", "sensors")
    ws.features.add(FEATURES)
    assert run_pipeline(ws, parse_pipeline(PIPELINE, yaml.safe_dump(PIPELINE))).model_ref == (
        "har@1"
    )
    return ws


def _policy_file(tmp_path, **doc):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"model": "har", **doc}))
    return path


def test_triggers_new_data_schedule_and_cooldown(har, tmp_path):
    ws = har
    p = set_policy(ws, _policy_file(tmp_path, triggers={"new_data": True, "every": "1h"}))
    assert check_triggers(ws, p) is None
    write_table(sensor_windows(n_per_class=60, length=LENGTH, seed=6), tmp_path / "s2.csv")
    ws.data.add(tmp_path / "s2.csv", "sensors")
    t = check_triggers(ws, p)
    assert (t.kind, t.cause) == ("new_data", {"data": "sensors@2"})
    later = time.time() + 7200
    p2 = parse_policy({"model": "har", "triggers": {"every": "1h"}, "cooldown": "10m"})
    assert check_triggers(ws, p2, now=later).kind == "schedule"
    # a retraining that used sensors@2 answers the new data; its cooldown holds the schedule
    retrain(ws, parse_policy({"model": "har", "action": "register"}), t)
    assert check_triggers(ws, p) is None
    assert check_triggers(ws, p2, now=time.time() + 60) is None
    assert check_triggers(ws, p2, now=later).kind == "schedule"


def test_a_better_challenger_is_registered_and_promoted_then_the_same_data_is_unchanged(
    har, tmp_path
):
    ws = har
    write_table(sensor_windows(n_per_class=80, length=LENGTH, seed=6), tmp_path / "s2.csv")
    ws.data.add(tmp_path / "s2.csv", "sensors", message="a bigger export")
    policy = parse_policy({"model": "har", "action": "register", "data": {"holdout": 0.3}})
    d = retrain(ws, policy, Trigger("manual", "by hand", {"user": "test"}))
    assert (d["decision"], d["status"], d["champion"], d["challenger"], d["data"]) == (
        "registered",
        "done",
        "har@1",
        "har@2",
        "sensors@2",
    )
    cmp = d["comparison"]["variants"]["onnx-f32"]
    assert cmp["challenger"]["data"]["n"] == cmp["champion"]["data"]["n"] == 80  # 25% of 320
    assert cmp["challenger"]["all"]["accuracy"] > cmp["champion"]["all"]["accuracy"]
    assert d["cause"] == {"user": "test", "reason": "by hand"}
    assert ws.registry.get_version("har@production").ref == "har@2"
    lin = ws.registry.lineage("har@2")["retraining"]
    assert (lin["trigger"], lin["champion"], lin["decision"]) == ("manual", "har@1", "registered")
    # the pipeline on the same data gives the same model: nothing new to compare
    again = retrain(ws, policy, Trigger("manual", "again"))
    assert (again["decision"], again["challenger"]) == ("unchanged", "har@2")
    assert [x["id"] for x in decisions(ws, "har")] == [again["id"], d["id"]]


def test_retraining_a_model_without_a_pipeline_or_champion_says_why(ws):
    from sklearn.linear_model import LogisticRegression

    from edgeops.model_io import save_sklearn

    blob = save_sklearn(LogisticRegression().fit([[0.0], [1.0]], [0, 1]))
    ws.registry.register("plain", blob, "skops")
    with pytest.raises(NotFound, match="edgeops models alias plain@VERSION production"):
        retrain(ws, parse_policy({"model": "plain"}), Trigger("manual", "x"))
    ws.registry.set_alias("plain@1", "production")
    with pytest.raises(InvalidInput, match="not trained by `edgeops train`"):
        retrain(ws, parse_policy({"model": "plain"}), Trigger("manual", "x"))
    assert decisions(ws, "plain") == []


def test_cli_policy_run_and_list(har, tmp_path, monkeypatch):
    ws = har
    monkeypatch.setenv("EDGEOPS_HOME", str(ws.settings.home))
    write_table(sensor_windows(n_per_class=80, length=LENGTH, seed=6), tmp_path / "s2.csv")
    ws.data.add(tmp_path / "s2.csv", "sensors")
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: har\naction: deploy\n")
    r = runner.invoke(app, ["retrain", "policy", "set", "har", str(bad)])
    assert r.exit_code == 2 and "register or canary" in r.output
    good = _policy_file(tmp_path, action="register", triggers={"new_data": True})
    r = runner.invoke(app, ["retrain", "policy", "set", "har", str(good)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["retrain", "policy", "show", "har", "--json"])
    assert json.loads(r.output)["triggers"] == ["new data"]
    r = runner.invoke(app, ["retrain", "har", "--reason", "new export", "--json"])  # shorthand
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert (d["trigger"], d["decision"], d["cause"]["reason"]) == (
        "manual",
        "registered",
        "new export",
    )
    r = runner.invoke(app, ["retrain", "list"])
    assert r.exit_code == 0 and "Retraining decisions" in r.output
    r = runner.invoke(app, ["retrain", "list", "har", "--json"])
    assert [(x["decision"], x["challenger"]) for x in json.loads(r.output)] == [
        ("registered", "har@2")
    ]
    r = runner.invoke(app, ["models", "lineage", "har@2"])
    assert "retrained from har@1" in r.output and "new export" in r.output
