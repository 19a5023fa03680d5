"""Model registry and metadata store on SQLite and PostgreSQL."""

from __future__ import annotations

import pickle
import subprocess

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from conftest import store_snapshot
from edgeops.errors import Conflict, InvalidInput, InvalidReference, NotFound
from edgeops.model_io import load_sklearn, save_sklearn


@pytest.fixture
def trained(ws, tmp_path):
    """A dataset version, a finished run and the fitted model, as a pipeline would leave them."""
    frame = load_iris(as_frame=True).frame
    path = tmp_path / "iris.csv"
    frame.to_csv(path, index=False)
    dv = ws.data.add(path, "iris").version
    X, y = frame.drop(columns="target").to_numpy(), frame.target.to_numpy()
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=7)
    model = LogisticRegression(C=0.5, max_iter=500, random_state=0).fit(Xtr, ytr)
    acc = float(model.score(Xte, yte))
    run = ws.runs.start(
        name="iris-logreg",
        seeds={"split": 7, "model": 0},
        params={"C": 0.5, "max_iter": 500},
        config_name="pipeline.yaml",
        config_text="model: logreg\nC: 0.5\n",
        dataset_version_id=dv.id,
        feature_ref="iris-features@1",
    )
    ws.runs.finish(run.id, metrics={"accuracy": acc})
    return {"dv": dv, "run": ws.runs.get(run.id), "model": model, "acc": acc, "X": Xte}


def test_register_records_lineage(ws, trained):
    mv = ws.registry.register(
        "iris",
        save_sklearn(trained["model"]),
        "skops",
        run_id=trained["run"].id,
        labels=["setosa", "versicolor", "virginica"],
    )
    assert mv.ref == "iris@1"
    assert mv.flavor == "sklearn"
    assert mv.params == {"C": 0.5, "max_iter": 500}
    assert mv.metrics == {"accuracy": trained["acc"]}
    assert mv.dataset_version_id == trained["dv"].id
    assert mv.feature_ref == "iris-features@1"
    (original,) = mv.variants
    assert (original.name, original.format) == ("original", "skops")

    lin = ws.registry.lineage("iris@1")
    assert lin["run"]["seeds"] == {"split": 7, "model": 0}
    assert lin["dataset"]["ref"] == "iris@1"
    assert lin["dataset"]["sha256"] == trained["dv"].sha256
    assert lin["features"] == "iris-features@1"

    restored = load_sklearn(ws.registry.variant_bytes("iris@1"))
    np.testing.assert_array_equal(
        restored.predict(trained["X"]), trained["model"].predict(trained["X"])
    )


def test_versions_are_numbered_and_immutable(ws, trained):
    blob = save_sklearn(trained["model"])
    refs = [ws.registry.register("iris", blob, "skops").ref for _ in range(3)]
    assert refs == ["iris@1", "iris@2", "iris@3"]
    v = ws.registry.add_variant(
        "iris@2", "onnx-f32", b"not-really-onnx", "onnx-bytes", metrics={"accuracy": 0.9}
    )
    assert (v.size, v.metrics) == (15, {"accuracy": 0.9})
    with pytest.raises(Conflict, match="variants are immutable"):
        ws.registry.add_variant("iris@2", "onnx-f32", b"other", "onnx-bytes")
    assert ws.registry.variant_bytes("iris@2", "onnx-f32") == b"not-really-onnx"
    with pytest.raises(NotFound, match="has no variant 'tflite-int8'"):
        ws.registry.variant("iris@2", "tflite-int8")
    assert [m["latest"] for m in ws.registry.models()] == [3]


def test_aliases_move_and_move_back(ws, trained):
    blob = save_sklearn(trained["model"])
    for _ in range(3):
        ws.registry.register("iris", blob, "skops")
    first = ws.registry.set_alias("iris@2", "production")
    assert (first.from_version, first.to_version) == (None, 2)
    moved = ws.registry.set_alias("iris@3", "production")
    assert (moved.from_version, moved.to_version) == (2, 3)
    assert ws.registry.get_version("iris@production").version == 3
    back = ws.registry.set_alias("iris@2", "production")
    assert (back.from_version, back.to_version) == (3, 2)
    assert ws.registry.get_version("iris@production").version == 2
    ws.registry.set_alias("iris@3", "canary")
    assert ws.registry.aliases_of("iris") == {"production": 2, "canary": 3}

    before = store_snapshot(ws)
    with pytest.raises(Conflict, match="already points to iris@2"):
        ws.registry.set_alias("iris@2", "production")
    with pytest.raises(NotFound, match="no version 9"):
        ws.registry.set_alias("iris@9", "production")
    with pytest.raises(InvalidReference):
        ws.registry.set_alias("iris@2", "latest")
    assert store_snapshot(ws) == before

    history = [(e.alias, e.from_version, e.to_version) for e in ws.registry.alias_history("iris")]
    assert history == [
        ("production", None, 2),
        ("production", 2, 3),
        ("production", 3, 2),
        ("canary", None, 3),
    ]
    assert ws.registry.get_version("iris@latest").version == 3
    assert ws.registry.get_version("iris").version == 3
    removed = ws.registry.remove_alias("iris", "canary")
    assert removed.to_version is None
    with pytest.raises(NotFound, match="no alias 'canary'"):
        ws.registry.get_version("iris@canary")


def test_untrusted_and_invalid_models_are_refused(ws, trained, tmp_path):
    before = store_snapshot(ws)
    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(pickle.dumps(trained["model"]))
    with pytest.raises(InvalidInput, match="pickles are refused"):
        ws.registry.register_file("iris", pkl)

    from skops.io import dumps

    sneaky = dumps({"model": trained["model"], "x": subprocess.CompletedProcess(["x"], 0)})
    with pytest.raises(InvalidInput, match=r"does not trust: subprocess\.CompletedProcess"):
        ws.registry.register("iris", sneaky, "skops")
    with pytest.raises(InvalidInput, match="not a TFLite flatbuffer"):
        ws.registry.register("iris", b"12345678", "tflite")
    with pytest.raises(InvalidInput, match=r"not a \.keras file"):
        ws.registry.register("iris", b"PK-but-not-zip", "keras")
    with pytest.raises(NotFound, match="no run"):
        ws.registry.register("iris", save_sklearn(trained["model"]), "skops", run_id="feedbeef")
    assert store_snapshot(ws) == before


def test_runs_record_environment_and_compare(ws, trained, tmp_path):
    run = trained["run"]
    assert run.status == "finished"
    assert run.finished_at is not None
    assert run.config_text == "model: logreg\nC: 0.5\n"
    assert run.packages["scikit-learn"]
    assert run.packages["numpy"] == np.__version__
    other = ws.runs.start(name="iris-logreg", seeds={"split": 7, "model": 1}, params={"C": 1.0})
    ws.runs.log(other.id, metrics={"accuracy": 0.5})
    ws.runs.finish(other.id, "gated", reason="accuracy 0.5 < min 0.9")
    cmp = ws.runs.compare([run.id, other.id[:6]])
    assert cmp["params"]["C"] == [0.5, 1.0]
    assert cmp["params_differ"] == ["C", "max_iter"]
    assert cmp["seeds_differ"] == ["model"]
    assert cmp["metrics"]["accuracy"] == [trained["acc"], 0.5]
    gated = ws.runs.list(status="gated")
    assert [r.id for r in gated] == [other.id]
    assert gated[0].reason == "accuracy 0.5 < min 0.9"


def test_run_git_commit_is_recorded(ws, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "pipeline.yaml").write_text("a: 1\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    run = ws.runs.start(name="r", git_folder=repo)
    assert (run.git_commit, run.git_dirty) == (head, False)
    (repo / "pipeline.yaml").write_text("a: 2\n")
    assert ws.runs.start(name="r", git_folder=repo).git_dirty is True


def test_failed_block_marks_run_failed(ws):
    with pytest.raises(RuntimeError), ws.runs.track(name="boom") as run:
        raise RuntimeError("diverged")
    stored = ws.runs.get(run.id)
    assert stored.status == "failed"
    assert stored.reason == "RuntimeError: diverged"
