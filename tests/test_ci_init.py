"""`edgeops ci init`: the workflow's triggers and steps, and its commands run for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

import edgeops
from edgeops.cli import app
from edgeops.datasets import sensor_windows, write_table

runner = CliRunner()
AXES = ("ax", "ay", "az")
FEATURES = {
    "name": "wrist",
    "inputs": [{"name": a, "kind": "window", "length": 16} for a in AXES],
    "steps": [
        *({"op": "window_stats", "input": a, "stats": ["mean", "std", "ptp"]} for a in AXES),
        {"op": "scale"},
    ],
}
PIPELINE = {
    "name": "har",
    "data": "sensors",
    "label": "label",
    "features": "wrist",
    "model": {"kind": "random_forest", "params": {"n_estimators": 10, "max_depth": 6}},
    "export": ["onnx-f32"],
    "gates": {"min_accuracy": 0.5},
}


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A model repository: pipelines/har.yaml, data/sensors.csv, features/wrist.yaml."""
    root = tmp_path / "repo"
    for folder in ("pipelines", "data", "features"):
        (root / folder).mkdir(parents=True)
    write_table(sensor_windows(n_per_class=30, length=16, seed=5), root / "data" / "sensors.csv")
    (root / "features" / "wrist.yaml").write_text(yaml.safe_dump(FEATURES))
    (root / "pipelines" / "har.yaml").write_text(yaml.safe_dump(PIPELINE))
    monkeypatch.chdir(root)
    return root


def _init(*args):
    return runner.invoke(app, ["ci", "init", *args])


def _workflow(root):
    return yaml.safe_load((root / ".github" / "workflows" / "edgeops.yml").read_text())


def _runs(doc):
    return {s["name"]: s["run"].splitlines() for s in doc["jobs"]["train"]["steps"] if "run" in s}


def test_workflow_triggers_steps_and_artifacts(repo):
    out = _init("--json")
    assert out.exit_code == 0, out.output
    plan = json.loads(out.output)
    assert plan == {
        "path": str(repo / ".github" / "workflows" / "edgeops.yml"),
        "pipelines": ["pipelines/har.yaml"],
        "models": ["har"],
        "packaged": ["har"],
        "data": {"sensors": "data/sensors.csv"},
        "features": ["features/wrist.yaml"],
        "notes": [],
    }
    doc = _workflow(repo)
    watched = [
        "pipelines/har.yaml",
        "data/sensors.csv",
        "features/wrist.yaml",
        ".github/workflows/edgeops.yml",
    ]
    assert doc["on"] == {
        "push": {"paths": watched},
        "pull_request": {"paths": watched},
        "schedule": [{"cron": "17 3 * * *"}],
        "workflow_dispatch": {},
    }
    job = doc["jobs"]["train"]
    assert job["runs-on"] == "ubuntu-latest" and job["defaults"]["run"]["shell"] == "bash"
    assert "services" not in job  # SQLite: no database or broker
    steps = job["steps"]
    assert [s.get("uses") for s in steps[:2]] == ["actions/checkout@v4", "actions/setup-python@v5"]
    assert _runs(doc) == {
        "Install edgeops": [f"python -m pip install 'edgeops[all]=={edgeops.__version__}'"],
        "Create the workspace": [
            'echo "EDGEOPS_HOME=$RUNNER_TEMP/edgeops" >> "$GITHUB_ENV"',
            'edgeops init "$RUNNER_TEMP/edgeops"',
        ],
        "Version the data": [
            'edgeops data add data/sensors.csv --name sensors -m "commit $GITHUB_SHA"'
        ],
        "Add the features": ["edgeops features add features/wrist.yaml"],
        "Train pipelines/har.yaml": ["edgeops train pipelines/har.yaml"],
        "Check har": [
            "mkdir -p reports",
            "edgeops check har@latest --json | tee reports/check-har.json",
        ],
        "Package har": ["edgeops package har@latest --out dist/har"],
    }
    uploads = {s["with"]["name"]: s for s in steps if s.get("uses") == "actions/upload-artifact@v4"}
    assert uploads["edgeops-check-reports"]["with"]["path"] == "reports/"
    assert uploads["edgeops-check-reports"]["if"] == "always()"
    assert uploads["edgeops-packages"]["with"]["path"] == "dist/"


def test_an_existing_workflow_is_kept_without_force(repo):
    assert _init().exit_code == 0
    target = repo / ".github" / "workflows" / "edgeops.yml"
    target.write_text("# mine\n")
    refused = _init()
    assert refused.exit_code == 4
    assert refused.output.strip() == f"error: {target} exists; pass --force to replace it"
    assert target.read_text() == "# mine\n"
    assert _init("--force").exit_code == 0
    assert "edgeops check har@latest" in target.read_text()


def test_options_pick_pipelines_models_and_files(repo):
    (repo / "pipelines" / "other.yaml").write_text(
        yaml.safe_dump(
            {
                **PIPELINE,
                "name": "har-c",
                "data": "more@2",
                "features": "auto",
                "export": ["c-emlearn"],
            }
        )
    )
    write_table(sensor_windows(n_per_class=2, length=16, seed=6), repo / "extra" / "more.csv")
    out = _init("--model", "har-c", "--data", "extra/more.csv", "--json")
    assert out.exit_code == 0, out.output
    plan = json.loads(out.output)
    assert (plan["pipelines"], plan["models"], plan["packaged"]) == (
        ["pipelines/other.yaml"],
        ["har-c"],
        [],
    )
    assert plan["data"] == {"more": "extra/more.csv"}
    assert plan["notes"] == [
        "pipelines/other.yaml pins more@2, but the CI workspace starts empty and holds more@1 "
        "only; write `data: more` to train on the latest",
        "har-c exports no TFLite or ONNX variant, so it is checked but not packaged",
    ]
    runs = _runs(_workflow(repo))
    assert "Package har-c" not in runs and "Train pipelines/har.yaml" not in runs
    assert (
        runs["Check har-c"][-1]
        == "edgeops check har-c@latest --json | tee reports/check-har-c.json"
    )
    assert "edgeops-packages" not in (repo / ".github" / "workflows" / "edgeops.yml").read_text()

    both = _init(
        "--force", "--pipeline", "pipelines/har.yaml", "--pipeline", "pipelines/other.yaml"
    )
    assert both.exit_code == 2
    assert both.output.strip() == (
        "error: pipelines/other.yaml trains on data set 'more', but there is no data/more.csv "
        f"or data/more.parquet in {repo}; add it or pass --data FILE"
    )


@pytest.mark.parametrize(
    ("args", "setup", "message"),
    [
        (["--model", "nope"], None, "no pipeline builds the model 'nope' (they build har)"),
        (["--pipeline", "../elsewhere.yaml"], "outside", "is outside"),
        (["--pipeline", "missing.yaml"], None, "pipeline missing.yaml does not exist"),
        ([], "no-pipelines", "no pipeline files in"),
        ([], "no-data", "trains on data set 'sensors', but there is no data/sensors.csv"),
        ([], "no-features", "uses the features wrist, but no file in features/ defines them"),
        ([], "bad-pipeline", "pipeline field 'model.kind' is 'magic'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(repo, args, setup, message):
    if setup == "outside":
        (repo.parent / "elsewhere.yaml").write_text(yaml.safe_dump(PIPELINE))
    elif setup == "no-pipelines":
        (repo / "pipelines" / "har.yaml").unlink()
    elif setup == "no-data":
        (repo / "data" / "sensors.csv").unlink()
    elif setup == "no-features":
        (repo / "features" / "wrist.yaml").unlink()
    elif setup == "bad-pipeline":
        bad = {**PIPELINE, "model": {"kind": "magic"}}
        (repo / "pipelines" / "har.yaml").write_text(yaml.safe_dump(bad))
    out = _init(*args)
    assert out.exit_code == 2
    lines = [ln for ln in out.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (repo / ".github").exists()


def test_glob_characters_in_paths_match_only_the_file(repo):
    (repo / "pipelines" / "har.yaml").rename(repo / "pipelines" / "har[v2].yaml")
    assert _init().exit_code == 0
    doc = _workflow(repo)
    assert doc["on"]["push"]["paths"][0] == r"pipelines/har\[v2\].yaml"
    assert _runs(doc)["Train pipelines/har[v2].yaml"] == ["edgeops train 'pipelines/har[v2].yaml'"]


def test_the_workflow_commands_work(repo, tmp_path):
    """Every `run:` step but the install, in bash as GitHub runs it, with a runner's variables."""
    assert _init().exit_code == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "edgeops").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m edgeops "$@"\n')
    (bin_dir / "edgeops").chmod(0o755)
    github_env = tmp_path / "github_env"
    github_env.touch()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "RUNNER_TEMP": str(tmp_path / "runner"),
        "GITHUB_ENV": str(github_env),
        "GITHUB_SHA": "0123abcd",
    }
    for name, lines in _runs(_workflow(repo)).items():
        if name == "Install edgeops":
            continue
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", "\n".join(lines)],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"{name}: {proc.stdout}\n{proc.stderr}"
        env.update(ln.split("=", 1) for ln in github_env.read_text().splitlines())

    assert env["EDGEOPS_HOME"] == str(tmp_path / "runner" / "edgeops")
    ws = edgeops.Workspace.open(env["EDGEOPS_HOME"])
    try:
        assert ws.data.get("sensors@1").message == "commit 0123abcd"
        assert ws.registry.get_version("har@latest").ref == "har@1"
    finally:
        ws.close()
    report = json.loads((repo / "reports" / "check-har.json").read_text())
    assert (report["ref"], report["passed"]) == ("har@1", True)
    assert (repo / "dist" / "har" / "Dockerfile").is_file()
