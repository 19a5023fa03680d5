"""Fleet samples as the next data version (`edgeops data add-from-samples`), on SQLite and
PostgreSQL."""

from __future__ import annotations

import doctest
import hashlib
import json
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import store_snapshot
from edgeops.cli import app
from edgeops.data import from_samples
from edgeops.data.from_samples import add_from_samples
from edgeops.datasets import sensor_windows, write_table
from edgeops.errors import InvalidInput, NotFound
from edgeops.store.schema import Sample

T0 = 1_795_760_000.0
AXES = ("ax", "ay", "az")
runner = CliRunner()


def _window_input(seed: int, length: int = 8) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    return {a: [float(x) for x in rng.normal(size=length)] for a in AXES}


def _store(ws, samples, fleet=None):
    """``samples``: dicts with device, seq, input, label and optionally ts, model."""

    def write(s):
        for m in samples:
            s.add(
                Sample(
                    fleet=fleet or ws.settings.fleet,
                    device_id=m["device"],
                    sample_id=f"{m['device']}/b0/{m['seq']}",
                    model_ref=m.get("model", "har@1"),
                    variant="onnx-f32",
                    ts=m.get("ts", T0 + m["seq"]),
                    input=m["input"],
                    features=[0.0, 1.0],
                    outputs=[0.3, 0.7],
                    predicted="walk",
                    label=m["label"],
                )
            )

    ws.db.write(write)


def _sample(device, seq, label="walk", **kw):
    return {"device": device, "seq": seq, "input": _window_input(seq), "label": label, **kw}


@pytest.fixture
def sensors(ws, tmp_path):
    """``sensors@1``: 20 windows of length 8 (ax_000..az_007 and label)."""
    frame = sensor_windows(n_per_class=5, length=8, seed=3)
    path = write_table(frame, tmp_path / "sensors.csv")
    ws.data.add(path, "sensors", message="lab recordings")
    return frame


def _appended(ws, ref, n):
    return ws.data.load_frame(ref).iloc[-n:].reset_index(drop=True)


def _row_of(sample):
    row = {f"{a}_{i:03d}": v for a in AXES for i, v in enumerate(sample["input"][a])}
    return {**row, "label": sample["label"]}


def test_labelled_samples_become_the_next_version_with_their_origin(ws, sensors):
    labelled = [_sample("pi-2", 3, "run"), _sample("pi-1", 1), _sample("pi-1", 2, "idle")]
    _store(ws, [*labelled, _sample("pi-1", 4, label=None)])

    result = add_from_samples(ws, "sensors", since=T0)

    dv = result.version
    assert (result.created, dv.ref, dv.rows, dv.format) == (True, "sensors@2", 23, "csv")
    assert dv.message == "3 labelled samples from fleet default"
    new = ws.data.load_frame("sensors@2")
    assert list(new.columns) == list(sensors.columns)
    pd.testing.assert_frame_equal(new.iloc[:20], ws.data.load_frame("sensors@1"))
    # oldest first; every value exactly the device's input, the label as given
    in_order = sorted(labelled, key=lambda m: m["seq"])
    assert _appended(ws, "sensors@2", 3).to_dict("records") == [_row_of(m) for m in in_order]
    ids = ["pi-1/b0/1", "pi-1/b0/2", "pi-2/b0/3"]
    assert dv.origin == {
        "kind": "fleet_samples",
        "base": "sensors@1",
        "fleet": "default",
        "model": None,
        "device": None,
        "since": T0,
        "until": None,
        "samples": 3,
        "skipped": {},
        "devices": ["pi-1", "pi-2"],
        "sample_ids": ids,
        "sample_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
    }


def test_a_second_run_adds_only_new_samples_and_a_rerun_with_none_writes_nothing(ws, sensors):
    _store(ws, [_sample("pi-1", 1), _sample("pi-1", 2, "run")])
    assert add_from_samples(ws, "sensors").version.ref == "sensors@2"

    before = store_snapshot(ws)
    with pytest.raises(InvalidInput) as err:
        add_from_samples(ws, "sensors")
    assert str(err.value) == (
        "no new samples: the 2 found are all in sensors@2 already; see `edgeops labels list`"
    )
    assert store_snapshot(ws) == before

    _store(ws, [_sample("pi-1", 5, "idle"), _sample("pi-3", 6, "shake")])
    third = add_from_samples(ws, "sensors", message="week 2").version
    assert (third.ref, third.rows, third.message) == ("sensors@3", 24, "week 2")
    assert third.origin["base"] == "sensors@2"
    assert third.origin["sample_ids"] == ["pi-1/b0/5", "pi-3/b0/6"]
    assert third.origin["skipped"] == {"already_in_base": 2}
    assert list(_appended(ws, "sensors@3", 2)["label"]) == ["idle", "shake"]

    # from sensors@1 again: it holds no sample, so all four come, oldest first; that table
    # is sensors@3's bytes, and the same bytes are the same version
    again = add_from_samples(ws, "sensors", base="sensors@1")
    assert (again.created, again.version.ref) == (False, "sensors@3")
    # from sensors@3: the chain sensors@3 -> sensors@2 holds all four
    with pytest.raises(InvalidInput, match="the 4 found are all in sensors@3 already"):
        add_from_samples(ws, "sensors", base="sensors@3")


def test_no_labelled_samples_is_an_error_that_writes_nothing(ws, sensors):
    _store(ws, [_sample("pi-1", 1, label=None), _sample("pi-1", 2, "walk", ts=T0 - 10)])
    before = store_snapshot(ws)
    with pytest.raises(InvalidInput) as err:
        add_from_samples(ws, "sensors", since=T0)
    assert str(err.value) == (
        "no labelled samples in fleet default since 2026-11-27 06:13:20 UTC; "
        "see `edgeops labels list`"
    )
    assert err.value.exit_code == 2
    with pytest.raises(InvalidInput, match="no labelled samples from device pi-9 in fleet"):
        add_from_samples(ws, "sensors", device="pi-9")
    with pytest.raises(InvalidInput, match="until 2026-11-27 06:13:10 UTC"):
        add_from_samples(ws, "sensors", until=T0 - 10)
    assert store_snapshot(ws) == before


def test_samples_that_do_not_fit_are_skipped_and_counted(ws, sensors):
    good = _sample("pi-1", 1)
    short = _sample("pi-1", 2)
    short["input"]["ay"] = short["input"]["ay"][:7]
    extra = _sample("pi-1", 3)
    extra["input"]["temp"] = 21.5
    missing = _sample("pi-1", 4)
    del missing["input"]["az"]
    text = _sample("pi-1", 5)
    text["input"]["ax"][4] = "high"
    scalar = _sample("pi-1", 6)
    scalar["input"]["ax"] = 0.5
    null_value = _sample("pi-1", 7)
    null_value["input"]["az"][0] = None
    no_input = {**_sample("pi-1", 8), "input": None}
    samples = [good, short, extra, missing, text, scalar, null_value, no_input]
    _store(ws, samples)

    dv = add_from_samples(ws, "sensors").version
    assert (dv.rows, dv.origin["samples"], dv.origin["sample_ids"]) == (21, 1, ["pi-1/b0/1"])
    assert dv.origin["skipped"] == {
        "missing_column": 1,
        "missing_value": 1,
        "no_input": 1,
        "unknown_column": 1,
        "wrong_type": 2,
        "wrong_window_length": 1,
    }
    assert _appended(ws, "sensors@2", 1).to_dict("records") == [_row_of(good)]

    before = store_snapshot(ws)
    with pytest.raises(InvalidInput) as err:
        add_from_samples(ws, "sensors", base="sensors@2", since=T0 + 2, until=T0 + 3)
    assert str(err.value) == (
        "no new sample since 2026-11-27 06:13:22 UTC until 2026-11-27 06:13:23 UTC fits the "
        "columns of sensors@2 (skipped: wrong_window_length 1); "
        "first: sample pi-1/b0/2: window 'ay' has 7 values; the table has 8 (ay_000..ay_007)"
    )
    assert store_snapshot(ws) == before


def test_model_and_device_filters(ws, sensors):
    from telemetry_kit import register_model

    mv = register_model(ws, "har")
    ws.registry.set_alias(mv.ref, "production")
    _store(
        ws,
        [
            _sample("pi-1", 1, model=mv.ref),
            _sample("pi-2", 2, model=mv.ref),
            _sample("pi-1", 3, model="other@1"),
        ],
    )
    dv = add_from_samples(ws, "sensors", model="har@production", device="pi-1").version
    assert dv.origin["sample_ids"] == ["pi-1/b0/1"]
    assert (dv.origin["model"], dv.origin["device"]) == ("har@1", "pi-1")
    dv = add_from_samples(ws, "sensors", model="har").version
    assert dv.origin["sample_ids"] == ["pi-2/b0/2"]
    assert dv.origin["skipped"] == {"already_in_base": 1}
    with pytest.raises(NotFound):
        add_from_samples(ws, "sensors", model="har@7")
    # samples of another fleet are not this workspace's
    _store(ws, [_sample("pi-1", 9)], fleet="elsewhere")
    with pytest.raises(InvalidInput, match="the 2 found are all in sensors@3 already"):
        add_from_samples(ws, "sensors", model="har")


def test_label_column_base_and_bad_arguments(ws, tmp_path):
    frame = pd.DataFrame(
        {"temp": [20.5, 21.0], "site": ["lab", "roof"], "digit": [3, 4]},
    )
    ws.data.add(write_table(frame, tmp_path / "room.csv"), "room")
    ws.data.add(write_table(frame.iloc[:1], tmp_path / "other.csv"), "other")
    rows = [
        {"device": "pi-1", "seq": 1, "input": {"temp": 19.25, "site": "lab"}, "label": "7"},
        {"device": "pi-1", "seq": 2, "input": {"temp": 19, "site": "cellar"}, "label": "x"},
        {"device": "pi-1", "seq": 3, "input": {"temp": "19", "site": "lab"}, "label": "5"},
        {"device": "pi-1", "seq": 4, "input": {"temp": 18.0, "site": 2}, "label": "5"},
    ]
    _store(ws, rows)
    before = store_snapshot(ws)
    with pytest.raises(InvalidInput) as err:
        add_from_samples(ws, "room")
    assert str(err.value) == (
        "the table has no label column 'label' (its columns: temp, site, digit); "
        "name it with label_column"
    )
    with pytest.raises(InvalidInput, match="--base other@1 is not a version of room; use room@"):
        add_from_samples(ws, "room", base="other@1", label_column="digit")
    with pytest.raises(NotFound, match="no dataset named 'nothing'"):
        add_from_samples(ws, "nothing")
    assert store_snapshot(ws) == before

    dv = add_from_samples(ws, "room", label_column="digit").version
    assert dv.origin["skipped"] == {"wrong_label": 1, "wrong_type": 2}
    assert _appended(ws, dv.ref, 1).to_dict("records") == [
        {"temp": 19.25, "site": "lab", "digit": 7}
    ]
    assert ws.data.load_frame(dv.ref)["digit"].dtype == np.int64


def test_parquet_base_stays_parquet_with_exact_values(ws, tmp_path):
    pytest.importorskip("pyarrow")
    frame = sensor_windows(n_per_class=5, length=8, seed=4)
    ws.data.add(write_table(frame, tmp_path / "s.parquet"), "sensors")
    sample = _sample("pi-1", 1, "shake")
    _store(ws, [sample])
    dv = add_from_samples(ws, "sensors").version
    assert (dv.format, dv.filename, dv.rows) == ("parquet", "s.parquet", 21)
    assert _appended(ws, dv.ref, 1).to_dict("records") == [_row_of(sample)]


def test_unlabelled_samples_only_when_asked(ws, sensors):
    _store(ws, [_sample("pi-1", 1, label=None), _sample("pi-1", 2)])
    dv = add_from_samples(ws, "sensors", labelled_only=False).version
    assert dv.origin["sample_ids"] == ["pi-1/b0/1", "pi-1/b0/2"]
    labels = _appended(ws, dv.ref, 2)["label"].tolist()
    assert pd.isna(labels[0]) and labels[1] == "walk"


def test_excluded_samples_are_left_out_and_counted(ws, sensors):
    _store(ws, [_sample("pi-1", 1), _sample("pi-1", 2), _sample("pi-2", 3)])
    dv = add_from_samples(ws, "sensors", exclude=["pi-1/b0/2"]).version
    assert dv.origin["sample_ids"] == ["pi-1/b0/1", "pi-2/b0/3"]
    assert dv.origin["skipped"] == {"excluded": 1}
    before = store_snapshot(ws)
    with pytest.raises(InvalidInput) as err:
        add_from_samples(ws, "sensors", exclude={"pi-1/b0/2"})
    assert str(err.value) == (
        "no new samples: of the 3 found, 1 are excluded and 2 in sensors@2 already"
    )
    assert store_snapshot(ws) == before


def test_cli_add_from_samples(ws, sensors):
    now = time.time()
    _store(
        ws,
        [
            _sample("pi-1", 1, ts=now - 3600),
            _sample("pi-2", 2, "run", ts=now - 60),
            _sample("pi-1", 3, ts=now - 9 * 86400),  # older than --since
        ],
    )
    short = _sample("pi-2", 4, ts=now - 30)
    short["input"]["ax"] = short["input"]["ax"][:4]
    _store(ws, [short])
    home = ["--workspace", str(ws.settings.home)]

    out = runner.invoke(app, [*home, "data", "add-from-samples", "sensors", "--since", "7d"])
    assert out.exit_code == 0, out.output
    assert "Added sensors@2: 2 rows from 2 devices appended to sensors@1 (22 rows)" in out.output
    assert "Skipped: wrong_window_length 1" in out.output

    shown = runner.invoke(app, [*home, "data", "show", "sensors@2"])
    assert shown.exit_code == 0, shown.output
    assert "fleet_samples" in shown.output and "2 ids (see --json)" in shown.output

    again = runner.invoke(app, [*home, "data", "add-from-samples", "sensors", "--since", "7d"])
    assert again.exit_code == 2
    lines = [ln for ln in again.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no new sample since ")
    assert "(skipped: wrong_window_length 1); first: sample pi-2/b0/4" in lines[0]

    args = ["data", "add-from-samples", "sensors", "--since", "30d", "--until", "8d", "--json"]
    js = runner.invoke(app, [*home, *args, "-m", "old one"])
    assert js.exit_code == 0, js.output
    doc = json.loads(js.output)
    assert (doc["created"], doc["ref"], doc["rows"], doc["message"]) == (
        True,
        "sensors@3",
        23,
        "old one",
    )
    assert doc["origin"]["sample_ids"] == ["pi-1/b0/3"]
    assert doc["origin"]["until"] - doc["origin"]["since"] == pytest.approx(22 * 86400, abs=5)

    bad = runner.invoke(app, [*home, "data", "add-from-samples", "sensors", "--since", "soon"])
    assert bad.exit_code == 2
    assert bad.output.strip() == "error: --since 'soon' is not a duration; use e.g. 30s, 5m, 2h"


def test_row_mapper_doctests():
    assert doctest.testmod(from_samples).failed == 0
