"""The CLI: every command documented and exemplified; flows and errors through the real app."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edgeops.cli import app
from edgeops.store import SCHEMA_VERSION

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
runner = CliRunner()


def _commands(group=None, prefix=()):
    group = group or typer.main.get_command(app)
    for name, cmd in sorted(group.commands.items()):
        path = (*prefix, name)
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, path)
        else:
            yield " ".join(path), cmd


ALL_COMMANDS = list(_commands())


def test_there_are_commands_in_every_group():
    names = [n for n, _ in ALL_COMMANDS]
    for expected in (
        "init",
        "info",
        "demo",
        "data add",
        "data diff",
        "runs compare",
        "models alias",
        "models lineage",
        "models get",
    ):
        assert expected in names


@pytest.mark.parametrize(("name", "cmd"), ALL_COMMANDS, ids=[n for n, _ in ALL_COMMANDS])
def test_command_has_help_with_example_and_is_documented(name, cmd):
    assert cmd.help and len(cmd.help.strip().splitlines()[0]) > 10
    assert re.search(r"Example: `edgeops ", cmd.help), f"{name} help has no example"
    result = runner.invoke(app, [*name.split(), "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output
    docs = DOCS.read_text()
    assert re.search(rf"^#+ `edgeops {re.escape(name)}`", docs, re.M), f"{name} not in docs/cli.md"


def _ok(args, **kw):
    result = runner.invoke(app, args, **kw)
    assert result.exit_code == 0, result.output
    return result


def test_cli_flow(tmp_path, monkeypatch):
    from sklearn.datasets import load_iris

    _ok(["init", str(tmp_path / "w")])
    monkeypatch.chdir(tmp_path / "w")
    frame = load_iris(as_frame=True).frame
    frame.to_csv("iris.csv", index=False)
    frame.iloc[:120].to_csv("iris2.csv", index=False)
    added = json.loads(_ok(["data", "add", "iris.csv", "--name", "iris", "--json"]).output)
    assert (added["created"], added["ref"], added["rows"]) == (True, "iris@1", 150)
    assert "Unchanged" in _ok(["data", "add", "iris.csv", "-n", "iris"]).output
    _ok(["data", "add", "iris2.csv", "-n", "iris", "-m", "fewer rows"])
    listed = json.loads(_ok(["data", "list", "--json"]).output)
    assert [(d["name"], d["latest"], d["rows"]) for d in listed] == [("iris", 2, 120)]
    shown = json.loads(_ok(["data", "show", "iris@1", "--json"]).output)
    assert shown["versions"] == [1, 2]
    assert shown["profile"]["columns"]["target"]["mean"] == 1.0
    diff = json.loads(_ok(["data", "diff", "iris@1", "iris@2", "--json"]).output)
    assert diff["rows"] == {"from": 150, "to": 120}
    _ok(["data", "get", "iris@1", "--out", "back.csv"])
    assert Path("back.csv").read_bytes() == Path("iris.csv").read_bytes()

    from sklearn.linear_model import LogisticRegression

    from edgeops.model_io import save_sklearn

    model = LogisticRegression(max_iter=500).fit(frame.iloc[:, :4], frame.target)
    Path("m.skops").write_bytes(save_sklearn(model))
    reg = json.loads(
        _ok(["models", "register", "iris", "-f", "m.skops", "--data", "iris@1", "--json"]).output
    )
    assert reg["ref"] == "iris@1" and reg["dataset"] == "iris@1"
    _ok(["models", "register", "iris", "-f", "m.skops"])
    assert "moved" not in _ok(["models", "alias", "iris@1", "production"]).output
    assert "version 1 → 2" in _ok(["models", "alias", "iris@2", "production"]).output
    card = json.loads(_ok(["models", "show", "iris@production", "--json"]).output)
    assert (card["version"], card["aliases"]) == (2, ["production"])
    lineage = json.loads(_ok(["models", "lineage", "iris@1", "--json"]).output)
    assert lineage["dataset"]["ref"] == "iris@1"
    history = json.loads(_ok(["models", "history", "iris", "--json"]).output)
    assert [(h["from"], h["to"]) for h in history] == [(None, 1), (1, 2)]
    _ok(["models", "get", "iris@1", "--out", "copy.skops"])
    assert Path("copy.skops").read_bytes() == Path("m.skops").read_bytes()
    models = json.loads(_ok(["models", "list", "--json"]).output)
    assert models[0]["aliases"] == {"production": 2}
    info = json.loads(_ok(["info", "--json"]).output)
    assert (info["datasets"], info["models"]) == (1, 1)
    assert info["schema"] == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["data", "show", "iris@9"], 3, "no dataset named 'iris'"),
        (["data", "add", "missing.csv", "-n", "x"], 2, "missing.csv does not exist"),
        (["models", "show", "iris@@2"], 2, "is not NAME, NAME@VERSION or NAME@ALIAS"),
        (["models", "alias", "nomodel@1", "production"], 3, "no model named 'nomodel'"),
        (["runs", "show", "abc"], 2, "at least 4 characters"),
    ],
)
def test_errors_are_one_line_with_exit_codes(tmp_path, monkeypatch, args, code, message):
    _ok(["init", str(tmp_path / "w")])
    monkeypatch.chdir(tmp_path / "w")
    result = runner.invoke(app, args)
    assert result.exit_code == code
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_no_workspace_says_to_init(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "list"])
    assert result.exit_code == 2
    assert "run `edgeops init`" in result.output


def test_installed_entry_point_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "edgeops", "-w", str(tmp_path / "none"), "models", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_unreachable_database_is_one_line(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _ok(["init", str(tmp_path / "w")])
    monkeypatch.setenv("EDGEOPS_DB_URL", f"postgresql://postgres@127.0.0.1:{port}/x")
    result = runner.invoke(app, ["-w", str(tmp_path / "w"), "models", "list"])
    assert result.exit_code == 6
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot open the store at postgresql://postgres@127.0.0.1")


def test_features_train_and_quantize_through_the_cli(tmp_path, monkeypatch):
    import yaml

    from edgeops.datasets import sensor_windows, write_table
    from edgeops.demo import DEMO_FEATURES

    _ok(["init", str(tmp_path / "w")])
    monkeypatch.chdir(tmp_path / "w")
    write_table(sensor_windows(n_per_class=60, seed=2), Path("s.csv"))
    _ok(["data", "add", "s.csv", "-n", "sensors"])
    Path("wrist.yaml").write_text(yaml.safe_dump(DEMO_FEATURES))
    added = json.loads(_ok(["features", "add", "wrist.yaml", "--json"]).output)
    assert (added["ref"], added["created"], added["current"]) == ("wrist@1", True, True)
    changed = {**DEMO_FEATURES, "steps": DEMO_FEATURES["steps"][:-1]}
    Path("wrist2.yaml").write_text(yaml.safe_dump(changed))
    assert "Added wrist@2" in _ok(["features", "add", "wrist2.yaml"]).output
    assert "current version 2 → 1" in _ok(["features", "revert", "wrist", "--to", "1"]).output
    listed = json.loads(_ok(["features", "list", "--json"]).output)
    assert [(f["name"], f["current"], f["versions"]) for f in listed] == [("wrist", 1, 2)]
    found = json.loads(_ok(["features", "search", "har", "--json"]).output)
    assert [f["ref"] for f in found] == ["wrist@1", "wrist@2"]
    hist = json.loads(_ok(["features", "history", "wrist", "--json"]).output)
    assert [h["action"] for h in hist] == ["add", "add", "revert"]
    mat = json.loads(
        _ok(
            [
                "features",
                "materialize",
                "wrist@1",
                "--data",
                "sensors@1",
                "--out",
                "feat.csv",
                "--json",
            ]
        ).output
    )
    assert (mat["rows"], mat["columns"], mat["cached"]) == (240, 33, False)
    assert (
        "Reused cached" in _ok(["features", "materialize", "wrist@1", "--data", "sensors@1"]).output
    )
    assert Path("feat.csv").read_text().splitlines()[0].startswith("ax_mean,ax_std")

    pipeline = {
        "name": "har",
        "data": "sensors@1",
        "label": "label",
        "features": "wrist",
        "model": {"kind": "random_forest", "params": {"n_estimators": 10}},
        "export": ["onnx-f32"],
        "alias": "staging",
    }
    Path("p.yaml").write_text(yaml.safe_dump(pipeline))
    first = json.loads(_ok(["train", "p.yaml", "--json"]).output)
    assert (first["status"], first["model"]) == ("registered", "har@1")
    again = _ok(["train", "p.yaml"]).output
    assert "train              random_forest (cached: inputs unchanged)" in again
    assert "Unchanged, already har@1" in again
    shown = json.loads(_ok(["features", "show", "wrist@1", "--json"]).output)
    assert shown["models"] == ["har@1"]
    q = json.loads(_ok(["quantize", "har@1", "--format", "c-emlearn", "--json"]).output)
    assert q["variant"] == "c-emlearn" and q["metrics"]["agreement"] == 1.0
    card = _ok(["models", "show", "har@staging"]).output
    assert "c-emlearn" in card and "onnx-f32" in card

    Path("gated.yaml").write_text(
        yaml.safe_dump({**pipeline, "name": "har-g", "gates": {"min_accuracy": 1.0}})
    )
    gated = runner.invoke(app, ["train", "gated.yaml"])
    assert gated.exit_code == 7
    assert "error: run " in gated.output and "did not pass its gates" in gated.output
    assert (
        json.loads(_ok(["runs", "list", "--status", "gated", "--json"]).output)[0]["name"]
        == "har-g"
    )
    bad = runner.invoke(app, ["train", "wrist.yaml"])  # a feature spec, not a pipeline
    assert bad.exit_code == 2
    assert "error: pipeline has an unknown field" in bad.output
