"""The feature store on SQLite and PostgreSQL: versions, search, revert, materialization."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from conftest import store_snapshot
from edgeops.datasets import sensor_windows, write_table
from edgeops.errors import Conflict, InvalidInput, NotFound
from edgeops_protocol.features import FittedFeatures

SPEC = {
    "name": "wrist",
    "description": "Accelerometer window statistics",
    "tags": ["imu", "har"],
    "inputs": [{"name": a, "kind": "window", "length": 64} for a in ("ax", "ay", "az")],
    "steps": [
        *(
            {"op": "window_stats", "input": a, "stats": ["mean", "std", "rms"]}
            for a in ("ax", "ay")
        ),
        {"op": "fft_bands", "input": "az", "bands": 4},
        {"op": "scale", "method": "standard"},
    ],
}


@pytest.fixture
def sensors(ws, tmp_path):
    path = tmp_path / "sensors.csv"
    write_table(sensor_windows(n_per_class=30, seed=3), path)
    return ws.data.add(path, "sensors").version


def test_same_definition_same_version_changed_definition_new_version(ws, tmp_path):
    fv1, created1 = ws.features.add(SPEC)
    reordered = json.loads(json.dumps(SPEC))
    reordered["description"] = "prose changes do not make a new version"
    path = tmp_path / "wrist.yaml"
    path.write_text(yaml.safe_dump(reordered, sort_keys=True))
    fv_same, created_same = ws.features.add(path)
    changed = {**SPEC, "steps": [*SPEC["steps"][:-1], {"op": "scale", "method": "minmax"}]}
    fv2, created2 = ws.features.add(changed)
    assert (fv1.ref, created1, fv_same.ref, created_same, fv2.ref, created2) == (
        "wrist@1",
        True,
        "wrist@1",
        False,
        "wrist@2",
        True,
    )
    assert ws.features.get("wrist").version == 2
    assert fv1.columns[:2] == ["ax_000", "ax_001"] and len(fv1.columns) == 192


def test_revert_keeps_history(ws):
    ws.features.add(SPEC)
    ws.features.add({**SPEC, "steps": SPEC["steps"][:-1]})
    assert ws.features.revert("wrist", 1) == (2, 1)
    assert ws.features.get("wrist").version == 1
    assert ws.features.get("wrist@latest").version == 2
    with pytest.raises(Conflict, match="already the current version"):
        ws.features.revert("wrist", 1)
    with pytest.raises(NotFound, match="no version 5"):
        ws.features.revert("wrist", 5)
    ws.features.add({**SPEC, "steps": SPEC["steps"][:-1]})  # re-adding v2's definition
    events = [(e.action, e.from_version, e.to_version) for e in ws.features.history("wrist")]
    assert events == [("add", None, 1), ("add", 1, 2), ("revert", 2, 1), ("readd", 1, 2)]


def test_search_matches_name_description_tags_columns(ws):
    ws.features.add(SPEC)
    ws.features.add(
        {
            "name": "climate",
            "description": "room temperature",
            "inputs": [{"name": "temp", "kind": "numeric"}],
            "steps": [{"op": "select", "columns": ["temp"]}],
        }
    )
    assert [r["ref"] for r in ws.features.search("IMU")] == ["wrist@1"]
    assert ws.features.search("imu")[0]["matched"] == ["tags"]
    assert [r["ref"] for r in ws.features.search("temperature")] == ["climate@1"]
    assert [r["ref"] for r in ws.features.search("az_063")] == ["wrist@1"]
    assert ws.features.search("accelerometer")[0]["matched"] == ["description"]
    assert ws.features.search("nothing-like-this") == []


def test_materialize_once_then_reuse(ws, sensors):
    ws.features.add(SPEC)
    frame = ws.data.load_frame(sensors.ref)
    first = ws.features.materialize("wrist@1", sensors, frame)
    second = ws.features.materialize("wrist@1", sensors, frame)
    assert (first.cached, second.cached) == (False, True)
    assert first.X.shape == (120, 3 + 3 + 4)
    np.testing.assert_array_equal(first.X, second.X)
    assert first.fitted == second.fitted
    # the stored table is what the device-side transform computes from raw rows
    rows = frame.head(5).to_dict("records")
    device = FittedFeatures.from_dict(second.record.fitted).transform_rows(rows)
    np.testing.assert_array_equal(device, first.X[:5])
    # scaled on all rows: standardized columns
    np.testing.assert_allclose(first.X.mean(axis=0), 0, atol=1e-5)
    part = ws.features.materialize(
        "wrist@1", sensors, frame, fit_rows=np.arange(60), fit_on="rows:0-59"
    )
    assert part.cached is False
    assert not np.allclose(part.X, first.X)


def test_bad_specs_and_missing_columns_change_nothing(ws, sensors, tmp_path):
    ws.features.add(SPEC)
    before = store_snapshot(ws)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninputs: [\n")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        ws.features.add(bad)
    with pytest.raises(InvalidInput, match=r"field 'op' must be one of .*got 'wavelet'"):
        ws.features.add({**SPEC, "steps": [{"op": "wavelet", "input": "ax"}]})
    with pytest.raises(InvalidInput, match="unknown"):
        ws.features.add({**SPEC, "colour": "red"})
    other = {
        "name": "pressure",
        "inputs": [{"name": "bar", "kind": "numeric"}],
        "steps": [{"op": "select", "columns": ["bar"]}],
    }
    ws.features.add(other)
    before = store_snapshot(ws)
    with pytest.raises(InvalidInput, match="needs column 'bar', which sensors@1 does not have"):
        ws.features.materialize("pressure@1", sensors, ws.data.load_frame(sensors.ref))
    assert store_snapshot(ws) == before


def test_models_using_a_feature_version(ws):
    from sklearn.linear_model import LogisticRegression

    from edgeops.model_io import save_sklearn

    ws.features.add(SPEC)
    blob = save_sklearn(LogisticRegression().fit([[0.0], [1.0]], [0, 1]))
    ws.registry.register("m", blob, "skops", feature_ref="wrist@1")
    ws.registry.register("m", blob, "skops", feature_ref="wrist@1")
    assert ws.features.models_using("wrist@1") == ["m@1", "m@2"]
