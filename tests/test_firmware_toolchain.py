"""The firmware toolchain: generate a project for a model, test its C against Python, size it.

- the pipeline exports ``emlearn-loadable`` (EOML) and measures it in the firmware's own
  C loader; emlearn devices are given it first;
- ``edgeops firmware generate`` / ``firmware test`` on a digits random forest and on a
  sensor-window model (window_stats, fft_bands, scale): the C transforms within the
  stated tolerance (in fact bit for bit) and the predictions exactly the reference's;
  every transform op, NaN and infinities included, against ``edgeops_protocol``;
- ``--target cortex-m4``: cross-compiled with arm-none-eabi-gcc, flash and RAM recorded
  on the variant and shown by ``models show``; a TFLite model's arena;
- a rollout skips a device class the variant does not fit, with the reason;
- ``edgeops keys device`` and the controller's per-device HMAC signing (publishing and
  re-signing); the host firmware declares its flash and RAM in its state.

Needs gcc, make and emlearn; the cortex-m4 parts need gcc-arm-none-eabi and
libnewlib-arm-none-eabi, the host firmware libmosquitto-dev and Mosquitto: skipped
locally without them, failing in CI.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from edgeops import Workspace
from edgeops.cli import app
from edgeops.datasets import digits_frame, sensor_windows, write_table
from edgeops.errors import InvalidInput
from edgeops.firmware.build import build_program, has_libmosquitto, templates_dir
from edgeops.firmware.project import (
    TOLERANCE,
    HeldOut,
    feature_params_c,
    generate,
    model_data_c,
    vectors_text,
)
from edgeops.firmware.runner import EomlRunner
from edgeops.firmware.signing import FleetSigner, generate_device_key, load_device_keys
from edgeops.firmware.testing import compare_features, run_vectors
from edgeops.fleet.controller import RolloutController, RolloutOptions
from edgeops.fleet.deploy import choose_variant
from edgeops.fleet.keys import generate_key
from edgeops.mqtt import Message
from edgeops.pipeline import parse_pipeline
from edgeops.pipeline.check import check_version, variant_predict
from edgeops.pipeline.run import run_pipeline
from edgeops_protocol.features import fit
from edgeops_protocol.manifest import verify_envelope
from edgeops_protocol.messages import state_message
from edgeops_protocol.topics import device_topic
from rollout_kit import FakeClient

runner = CliRunner()
AXES = ("ax", "ay", "az")
WRIST = {
    "name": "wrist-stats",
    "inputs": [{"name": a, "kind": "window", "length": 64} for a in AXES],
    "steps": [
        *({"op": "window_stats", "input": a} for a in AXES),
        *({"op": "fft_bands", "input": a, "bands": 4} for a in AXES),
        {"op": "scale", "method": "standard"},
    ],
}


def _require(tool: str, why: str) -> None:
    if shutil.which(tool):
        return
    if os.environ.get("CI"):
        pytest.fail(f"{tool} is required in CI ({why})")
    pytest.skip(f"{tool} is not installed ({why})")


def _require_arm() -> None:
    _require("arm-none-eabi-gcc", "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi")


def _require_mosquitto_dev() -> None:
    if has_libmosquitto():
        return
    if os.environ.get("CI"):
        pytest.fail("libmosquitto-dev is required in CI (apt-get install libmosquitto-dev)")
    pytest.skip("libmosquitto-dev is not installed")


def _train(ws, doc: dict) -> str:
    result = run_pipeline(ws, parse_pipeline(doc, yaml.safe_dump(doc)))
    assert result.status == "registered", result
    return result.model_ref


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A workspace with a digits random forest (emlearn-loadable, c-emlearn, onnx-f32) and
    a random forest on sensor windows (window_stats + fft_bands + standard scaling)."""
    _require("make", "the generated projects build with make")
    home = tmp_path_factory.mktemp("fw-toolchain")
    ws, _ = Workspace.init(home)
    write_table(digits_frame(), home / "digits.csv")
    ws.data.add(home / "digits.csv", "digits")
    write_table(sensor_windows(n_per_class=100, seed=0), home / "sensors.csv")
    ws.data.add(home / "sensors.csv", "sensors")
    ws.features.add(WRIST)
    digits = {
        "name": "digits",
        "data": "digits@1",
        "label": "label",
        "model": {"kind": "random_forest", "params": {"n_estimators": 8, "max_depth": 6}},
        "export": ["emlearn-loadable", "c-emlearn", "onnx-f32"],
    }
    sensors = {
        "name": "wrist",
        "data": "sensors@1",
        "label": "label",
        "features": "wrist-stats@1",
        "model": {"kind": "random_forest", "params": {"n_estimators": 10, "max_depth": 8}},
        "export": ["emlearn-loadable"],
    }
    assert _train(ws, digits) == "digits@1"
    assert _train(ws, sensors) == "wrist@1"
    ws.close()
    return home


def _query(home: Path, fn):
    ws = Workspace.open(home)
    try:
        return fn(ws)
    finally:
        ws.close()


def cli(home: Path, *args: str, code: int = 0):
    result = runner.invoke(app, ["-w", str(home), *args])
    assert result.exit_code == code, result.output
    return result


# --- the emlearn-loadable export -------------------------------------------------------------


def test_pipeline_exports_emlearn_loadable_measured_in_the_firmware_loader(home):
    ws = Workspace.open(home)
    try:
        mv = ws.registry.get_version("digits@1")
        v = ws.registry.variant("digits@1", "emlearn-loadable")
        data = ws.registry.variant_bytes("digits@1", "emlearn-loadable")
        assert data[:4] == b"EOML" and v.format == "c-emlearn"
        assert v.meta["runtime"] == "emlearn" and v.meta["conversion"]["artifact"] == "EOML"
        assert v.meta["conversion"]["kind"] == "trees"
        assert v.metrics["size_bytes"] == len(data) == v.size
        # the same trees as emlearn's inline C: every prediction, so the same accuracy
        assert v.metrics["agreement"] == 1.0
        assert v.metrics["accuracy"] == mv.metrics["accuracy"]
        assert v.metrics["latency_ms_p50"] > 0
        X = digits_frame().drop(columns="label").to_numpy(dtype=np.float32)
        c_emlearn = ws.registry.variant("digits@1", "c-emlearn")
        predict, close = variant_predict(
            c_emlearn, ws.registry.variant_bytes(mv.ref, "c-emlearn"), 64
        )
        try:
            expected = predict(X)
        finally:
            close()
        with EomlRunner(data) as eoml:
            assert np.array_equal(eoml.predict(X), expected)
        # `edgeops check` runs the loadable form in the firmware's loader too
        by_variant = {x.subject: x for x in check_version(ws, "digits@1").checks}
        assert by_variant["emlearn-loadable"].passed
        loadable, close = variant_predict(v, data, 64)
        try:
            assert np.array_equal(loadable(X), expected)
        finally:
            close()
        # emlearn firmware is given the loadable form first
        assert choose_variant(mv, {"runtimes": ["emlearn"]}).name == "emlearn-loadable"
    finally:
        ws.close()
    keras = {
        "name": "k",
        "data": "d@1",
        "label": "y",
        "model": {"kind": "keras_mlp"},
        "export": ["emlearn-loadable"],
    }
    with pytest.raises(InvalidInput, match="emlearn-loadable is for scikit-learn trees and MLPs"):
        parse_pipeline(keras, yaml.safe_dump(keras))


# --- generate and test: digits ---------------------------------------------------------------


def test_digits_forest_generate_and_test_through_the_cli(home, tmp_path):
    out = tmp_path / "digits-host"
    res = json.loads(
        cli(
            home,
            "firmware",
            "generate",
            "digits@1",
            "--target",
            "host",
            "--out",
            str(out),
            "--json",
        ).output
    )
    assert (res["target"], res["model"], res["variant"], res["form"]) == (
        "host",
        "digits@1",
        "emlearn-loadable",
        "eoml",
    )
    assert (res["vectors"], res["n_features"]) == (450, 64)  # the 25 % held out of 1,797
    for name in (
        "Makefile",
        "README.md",
        "edgeops-project.json",
        "core/edgeops_features.c",
        "core/edgeops_agent.c",
        "ports/host/main.c",
        "app/edgeops_model_data.c",
        "app/edgeops_feature_params.c",
        "app/edgeops_board_config.h",
        "third_party/emlearn/eml_net.h",
        "third_party/emlearn/LICENSE.md",
        "test/vectors.txt",
        "test/expected.json",
        "test/Makefile",
    ):
        assert name in res["files"], name
    size = _query(home, lambda ws: len(ws.registry.variant_bytes("digits@1", "emlearn-loadable")))
    model_c = (out / "app" / "edgeops_model_data.c").read_text()
    assert f"edgeops_app_model[{size}]" in model_c
    assert (out / "test" / "vectors.txt").read_text().splitlines()[0] == "edgeops-vectors 1 450"
    assert "MIT License" in (out / "third_party" / "emlearn" / "LICENSE.md").read_text()
    project = json.loads((out / "edgeops-project.json").read_text())
    assert project["tolerance"] == TOLERANCE == {"rel": 1e-5, "abs": 1e-6}
    assert project["feature_names"][:2] == ["px_00", "px_01"]

    _require_mosquitto_dev()
    got = json.loads(cli(home, "firmware", "test", str(out), "--json").output)
    assert got["passed"] is True and got["rows"] == 450
    assert [(b["what"], b["status"]) for b in got["builds"]] == [
        ("test vectors (gcc)", "ok"),
        ("host firmware (gcc, libmosquitto)", "ok"),
    ]
    f = got["features"]
    assert (f["compared"], f["within_tolerance"], f["bit_exact"]) == (28800, 28800, 28800)
    p = got["predictions"]
    assert (p["rows"], p["equal_to_reference"], p["mismatched_rows"]) == (450, 450, [])
    assert p["agreement_with_original"] == 1.0
    assert p["accuracy"] == round(
        _query(home, lambda ws: ws.registry.get_version("digits@1").metrics["accuracy"]), 6
    )
    assert (out / "build" / "edgeops-firmware").is_file()
    table = cli(home, "firmware", "test", str(out)).output
    assert "28800 of 28800 within" in table and "450 of 450 equal to the reference" in table

    # a non-empty folder is refused, --force replaces it
    again = cli(home, "firmware", "generate", "digits@1", "--out", str(out), code=4)
    assert "is not empty" in again.output
    cli(home, "firmware", "generate", "digits@1", "--out", str(out), "--force", "--vectors", "100")
    assert (out / "test" / "vectors.txt").read_text().startswith("edgeops-vectors 1 100\n")
    assert not (out / "build").exists()  # the old project is gone, not merged
    assert json.loads(cli(home, "firmware", "test", str(out), "--json").output)["rows"] == 100


def test_generate_writes_nothing_when_it_fails(home, tmp_path, monkeypatch):
    import edgeops.firmware.project as project

    def broken(h):
        raise RuntimeError("disk full")

    monkeypatch.setattr(project, "vectors_text", broken)
    ws = Workspace.open(home)
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            generate(ws, "digits@1", "host", tmp_path / "p")
        with pytest.raises(InvalidInput, match="does not run on a microcontroller"):
            generate(ws, "digits@1", "host", tmp_path / "p", variant="onnx-f32")
    finally:
        ws.close()
    assert list(tmp_path.iterdir()) == []  # neither the project nor its temporary folder


# --- generate and test: sensor windows -------------------------------------------------------


def test_sensor_window_model_features_within_tolerance_and_predictions_exact(home, tmp_path):
    ws = Workspace.open(home)
    try:
        result = generate(ws, "wrist@1", "host", tmp_path / "wrist")
        fitted = ws.registry.variant("wrist@1", "emlearn-loadable").meta["features"]
    finally:
        ws.close()
    assert (result.vectors, result.n_features) == (100, 33)  # 7 stats + 4 bands, 3 axes
    params_c = (tmp_path / "wrist" / "app" / "edgeops_feature_params.c").read_text()
    center = fitted["params"]["steps"][-1]["center"]
    assert f"    {center[0]!r}, {center[1]!r}," in params_c  # the fitted means, exactly
    assert ".op = EDGEOPS_FEATURE_FFT_BANDS, .input = 2u, .count = 4u" in params_c
    r = run_vectors(tmp_path / "wrist")
    assert r.passed, r.to_dict()
    assert (r.features["compared"], r.features["within_tolerance"]) == (3300, 3300)
    assert r.features["max_abs_error"] <= TOLERANCE["abs"]
    assert (r.predictions["equal_to_reference"], r.predictions["rows"]) == (100, 100)

    # a wrong parameter in the C is caught: the first fitted mean off by one standard deviation
    scale = fitted["params"]["steps"][-1]["scale"]
    wrong = params_c.replace(f"    {center[0]!r},", f"    {center[0] + scale[0]!r},", 1)
    (tmp_path / "wrist" / "app" / "edgeops_feature_params.c").write_text(wrong)
    bad = runner.invoke(app, ["firmware", "test", str(tmp_path / "wrist"), "--json"])
    assert bad.exit_code == 7, bad.output
    doc = json.loads(bad.stdout)
    assert doc["passed"] is False and doc["features"]["within_tolerance"] == 3200
    assert doc["features"]["first_mismatch"]["feature"] == 0


def test_every_transform_in_c_matches_python_nan_and_inf_included(tmp_path):
    """All seven ops, a short odd window and a long one (pairwise sums past 128 values,
    uneven FFT bands), one-sided clips, minmax and standard scaling, unknown and missing
    categories, NaN and infinities in the raw samples."""
    spec = {
        "name": "every-op",
        "inputs": [
            {"name": "w", "kind": "window", "length": 7},
            {"name": "v", "kind": "window", "length": 200},
            {"name": "t", "kind": "numeric"},
            {"name": "u", "kind": "numeric"},
            {"name": "site", "kind": "categorical"},
        ],
        "steps": [
            {"op": "window_stats", "input": "w"},
            {"op": "fft_bands", "input": "w", "bands": 3},
            {"op": "window_stats", "input": "v", "stats": ["mean", "std", "rms", "zcr", "ptp"]},
            {"op": "fft_bands", "input": "v", "bands": 7},
            {"op": "window_raw", "input": "w"},
            {"op": "select", "columns": ["t", "u"]},
            {"op": "clip", "columns": ["t"], "quantiles": [0.05, 0.95]},
            {"op": "clip", "columns": ["u"], "min": -1.0},
            {"op": "scale", "columns": ["w_mean", "w_std", "v_fft0"], "method": "minmax"},
            {"op": "scale"},
            {"op": "one_hot", "column": "site"},
        ],
    }
    rng = np.random.default_rng(3)

    def table(n: int) -> pd.DataFrame:
        cols: dict = {}
        for name, length in (("w", 7), ("v", 200)):
            walk = np.cumsum(rng.normal(0, 1, (n, length)), axis=1) * rng.uniform(0.1, 50)
            for i in range(length):
                cols[f"{name}_{i:03d}"] = walk[:, i]
        cols["t"] = rng.normal(10, 3, n)
        cols["u"] = rng.normal(0, 2, n)
        cols["site"] = rng.choice(["lab", "field", "roof"], n).astype(object)
        return pd.DataFrame(cols)

    fitted = fit(spec, table(400))
    test = table(40)
    test.loc[0, "w_003"] = np.nan
    test.loc[1, "v_150"] = np.inf
    test.loc[2, "t"] = -np.inf
    test.loc[3, "u"] = np.nan
    test.loc[4, [f"w_{i:03d}" for i in range(7)]] = 2.5  # a constant window: no crossing
    test.loc[5, "site"] = "mars"  # unknown: all zeros
    test.loc[6, "site"] = None  # missing: all zeros
    with np.errstate(invalid="ignore"):  # NaN and infinities on purpose
        X = fitted.transform(test)
    assert np.isnan(X).any() and np.isinf(X).any()

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    header, source = feature_params_c(fitted, 2, ["a", "b"])
    (app_dir / "edgeops_feature_params.h").write_text(header)
    (app_dir / "edgeops_feature_params.c").write_text(source)
    fake = SimpleNamespace(name="none", format="tflite")
    for name, text in model_data_c("tflm", fake, b"\0" * 16).items():
        (app_dir / name).write_text(text)
    root = templates_dir()
    sources = [
        root / "core" / n
        for n in (
            "edgeops_err.c",
            "edgeops_model.c",
            "edgeops_model_emlearn.c",
            "edgeops_features.c",
        )
    ]
    sources += [root / "app" / "edgeops_app.c", root / "app" / "edgeops_vectors.c"]
    sources += sorted(app_dir.glob("*.c"))
    binary = build_program(sources, tmp_path / "vectors", includes=[app_dir])
    h = HeldOut(test, np.zeros(len(test), int), fitted, X)
    done = subprocess.run(
        [str(binary)], input=vectors_text(h), capture_output=True, text=True, check=True
    )
    rows = [line.split() for line in done.stdout.splitlines()]
    assert len(rows) == 40 and all(r[0] == "-" for r in rows)  # no model in this build
    got = np.array([[float(v) for v in r[1:]] for r in rows], dtype=np.float32)
    result = compare_features(got, X, TOLERANCE["rel"], TOLERANCE["abs"])
    assert result["passed"], result
    assert np.array_equal(np.isnan(got), np.isnan(X))
    names = list(fitted.feature_names)
    stats = [j for j, n in enumerate(names) if "_fft" not in n]
    assert np.array_equal(got[:, stats], X[:, stats], equal_nan=True)  # numpy's own sums
    one_hot = [names.index(f"site={c}") for c in ("field", "lab", "roof")]
    assert got[5, one_hot].tolist() == got[6, one_hot].tolist() == [0.0, 0.0, 0.0]


# --- cortex-m4 footprint ---------------------------------------------------------------------


def _size(elf: Path) -> dict[str, int]:
    out = (
        subprocess.run(
            ["arm-none-eabi-size", "-B", "-d", str(elf)], capture_output=True, text=True, check=True
        )
        .stdout.splitlines()[1]
        .split()
    )
    return {"text": int(out[0]), "data": int(out[1]), "bss": int(out[2])}


def test_cortex_m4_footprint_recorded_on_the_variant_and_shown(home, tmp_path):
    _require_arm()
    out = tmp_path / "digits-m4"
    res = json.loads(
        cli(
            home,
            "firmware",
            "generate",
            "digits@1",
            "--target",
            "cortex-m4",
            "--out",
            str(out),
            "--json",
        ).output
    )
    fp = res["footprint"]
    measured = _size(out / "build" / "footprint.elf")
    assert {k: fp[k] for k in ("text", "data", "bss")} == measured
    assert fp["flash_bytes"] == measured["text"] + measured["data"]
    assert fp["ram_bytes"] == measured["data"] + measured["bss"]
    assert fp["target"] == "cortex-m4" and fp["arena_bytes"] == 0
    assert fp["toolchain"].startswith("arm-none-eabi-gcc")
    size = _query(home, lambda ws: len(ws.registry.variant_bytes("digits@1", "emlearn-loadable")))
    assert fp["model_bytes"] == size
    assert fp["flash_bytes"] > size + 20_000  # the core is code too
    config = fp["config"]
    assert (config["EDGEOPS_MAX_FEATURES"], config["EDGEOPS_MAX_CLASSES"]) == (64, 10)
    assert config["EDGEOPS_MODEL_MAX_BYTES"] == math.ceil(fp["model_bytes"] * 1.5 / 1024) * 1024
    # the objects are ARM Thumb code for the FPU the flags name
    header = subprocess.run(
        ["arm-none-eabi-readelf", "-h", "-A", str(out / "build" / "footprint.elf")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "ARM" in header and "VFPv4-D16" in header
    # recorded on the variant, and shown by models show (JSON and table)
    ws = Workspace.open(home)
    try:
        assert ws.registry.variant("digits@1", "emlearn-loadable").metrics["footprint"] == fp
    finally:
        ws.close()
    shown = json.loads(cli(home, "models", "show", "digits@1", "--json").output)
    by_name = {v["name"]: v for v in shown["variants"]}
    assert by_name["emlearn-loadable"]["metrics"]["footprint"]["flash_bytes"] == fp["flash_bytes"]
    assert "footprint" not in by_name["c-emlearn"]["metrics"]
    text = cli(home, "models", "show", "digits@1").output
    assert "Firmware footprint" in text and str(fp["flash_bytes"]) in text
    assert str(fp["ram_bytes"]) in text
    # the project's own Makefile builds the static library, and its test vectors pass
    done = subprocess.run(["make", "-C", str(out), "lib"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "build" / "libedgeops.a").is_file()
    assert run_vectors(out).passed


def test_tflite_model_footprint_has_the_tflm_arena(home, tmp_path):
    _require_arm()
    pytest.importorskip("tensorflow")
    pytest.importorskip("tflite_micro")
    ws = Workspace.open(home)
    try:
        doc = {
            "name": "wrist-tf",
            "data": "sensors@1",
            "label": "label",
            "features": "wrist-stats@1",
            "model": {"kind": "keras_mlp", "params": {"hidden": [8], "epochs": 3}},
            "export": ["c-tflm"],
        }
        ref = _train(ws, doc)
        result = generate(ws, ref, "cortex-m4", tmp_path / "tf")
        variant = ws.registry.variant(ref, "c-tflm")
    finally:
        ws.close()
    fp = result.footprint
    assert result.form == "tflm" and fp["arena_bytes"] == variant.metrics["arena_bytes"] > 0
    assert fp["model_bytes"] == variant.metrics["model_bytes"]
    assert variant.metrics["footprint"] == fp
    r = run_vectors(tmp_path / "tf")  # the transforms; the model needs TFLite Micro's C++
    assert r.passed and r.predictions["status"] == "not run"
    assert r.features["within_tolerance"] == r.features["compared"] == 100 * 33


# --- rollouts: the footprint check -----------------------------------------------------------


def _state(fleet: str, device: str, runtimes: list[str], **memory: int) -> bytes:
    doc = json.loads(
        state_message(
            fleet=fleet,
            device=device,
            online=True,
            boot="b",
            ts=0.0,
            hardware="mcu",
            runtimes=runtimes,
            accepted_seq=0,
            model=None,
            previous=None,
            tags=["mcu"],
        )
    )
    return json.dumps({**doc, **memory}).encode()


FOOTPRINT = {"target": "cortex-m4", "flash_bytes": 81160, "ram_bytes": 150176, "arena_bytes": 0}


def test_rollout_skips_a_device_class_the_variant_does_not_fit(home, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPS_FLEET", "fit")
    ws = Workspace.open(home)
    try:
        ws.registry.record_variant_metrics("digits@1", "emlearn-loadable", {"footprint": FOOTPRINT})
        key = generate_key(tmp_path / "keys")
        client = FakeClient()
        ctl = RolloutController(ws, key, client)
        # the devices' state messages go through the controller, which keeps the declarations
        for device, memory in (
            ("mcu-small", {"flash_bytes": 65536, "ram_bytes": 131072}),
            ("mcu-big", {"flash_bytes": 1 << 20, "ram_bytes": 256 << 10}),
            ("mcu-quiet", {}),
        ):
            topic = device_topic("fit", device, "state")
            client.messages.put(Message(topic, _state("fit", device, ["emlearn"], **memory), True))
        ctl._pump(None, budget=0.0)
        assert ctl.fleet.get("mcu-small").state["flash_bytes"] == 65536
        assert "flash_bytes" not in ctl.fleet.get("mcu-quiet").state

        rid = ctl.create("digits@1", "tag:mcu", RolloutOptions(stages=(1.0,)))
        st = ctl.status(rid)
        assert st["skipped"] == {
            "mcu-small": "variant emlearn-loadable needs 81160 B flash / 150176 B RAM "
            "(cortex-m4), device has 65536 B flash / 131072 B RAM"
        }
        assert {d: x["variant"] for d, x in st["devices_detail"].items()} == {
            "mcu-big": "emlearn-loadable",
            "mcu-quiet": "emlearn-loadable",  # declares nothing: not refused
        }
        with pytest.raises(InvalidInput) as err:
            ctl.create("digits@1", "device:mcu-small", RolloutOptions())
        assert str(err.value).endswith(
            "mcu-small: variant emlearn-loadable needs 81160 B flash / 150176 B RAM "
            "(cortex-m4), device has 65536 B flash / 131072 B RAM"
        )
        # a TFLM arena counts as RAM: 150176 + 120000 > 256 KiB
        with_arena = {**FOOTPRINT, "arena_bytes": 120000}
        ws.registry.record_variant_metrics(
            "digits@1", "emlearn-loadable", {"footprint": with_arena}
        )
        with pytest.raises(InvalidInput, match=r"needs 81160 B flash / 270176 B RAM"):
            ctl.create("digits@1", "device:mcu-big", RolloutOptions())
    finally:
        ws.close()


# --- keys device, and the controller's signer ------------------------------------------------


def test_keys_device_prints_the_key_once_and_the_controller_signs_with_it(
    home, tmp_path, monkeypatch
):
    monkeypatch.setenv("EDGEOPS_FLEET", "sig")
    cli(home, "keys", "generate")
    made = json.loads(cli(home, "keys", "device", "mcu-07", "--json").output)
    assert made["device"] == "mcu-07" and re.fullmatch(r"mcu-07-[0-9a-f]{8}", made["hmac_key_id"])
    key = base64.b64decode(made["hmac_key"], validate=True)
    assert len(key) == 32
    ws = Workspace.open(home)
    path = ws.settings.keys_dir / "devices" / "mcu-07.hmac"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == f"{made['hmac_key_id']} {made['hmac_key']}\n"
    again = cli(home, "keys", "device", "mcu-07", code=4)
    assert "already has an HMAC key" in again.output
    text = cli(home, "keys", "device", "mcu-08").output
    assert 'hmac_key_id = "mcu-08-' in text and "hmac_key = " in text
    audit = json.loads(cli(home, "audit", "list", "--json").output)
    assert any(
        e["action"] == "key.generate"
        and e["subject"] == made["hmac_key_id"]
        and e["details"]["device"] == "mcu-07"
        for e in audit
    )

    try:
        from edgeops.fleet.keys import load_key

        fleet_key = load_key(ws.settings.keys_dir)
        client = FakeClient("sig")
        ctl = RolloutController(ws, fleet_key, client)  # default signer: <keys_dir>/devices
        for device, runtimes in (
            ("mcu-07", ["emlearn"]),
            ("pi-1", ["onnxruntime"]),
            ("mcu-09", ["emlearn"]),
        ):
            topic = device_topic("sig", device, "state")
            client.messages.put(Message(topic, _state("sig", device, runtimes), True))
        ctl._pump(None, budget=0.0)
        # a key made while the controller runs is used for the next manifest
        late = generate_device_key(ws.settings.keys_dir, "mcu-09")
        rid = ctl.create("digits@1", "tag:mcu", RolloutOptions(stages=(1.0,)))
        ctl._advance(rid, [], time.time(), None)
        keys = {k.key_id: k.key for k in load_device_keys(ws.settings.keys_dir).values()}
        mcu = client.desired("mcu-07")
        assert mcu["signature"]["alg"] == "hmac-sha256"
        assert mcu["signature"]["key_id"] == made["hmac_key_id"]
        assert verify_envelope(mcu, hmac_keys=keys)["model"]["variant"] == "emlearn-loadable"
        assert client.desired("mcu-09")["signature"]["key_id"] == late.key_id
        pi = client.desired("pi-1")
        assert pi["signature"]["alg"] == "ed25519"
        assert verify_envelope(pi, public_keys={fleet_key.key_id: fleet_key.public})
        assert pi["manifest"]["model"]["variant"] == "onnx-f32"
        # re-signing before expiry keeps each device's kind of signature
        assert ctl.resign_expiring(time.time(), margin=1e12) == 3
        assert client.desired("mcu-07")["signature"]["alg"] == "hmac-sha256"
        assert client.desired("pi-1")["signature"]["alg"] == "ed25519"
        # a signer of one's own
        calls = []

        def signer(device, manifest):
            calls.append(device)
            return FleetSigner(fleet_key)(device, manifest)

        own = RolloutController(ws, fleet_key, FakeClient(), signer=signer)
        rid = own.create("digits@1", "device:pi-1", RolloutOptions())
        own._advance(rid, [], time.time(), None)
        assert calls == ["pi-1"]
    finally:
        ws.close()


# --- the host firmware declares its memory ---------------------------------------------------


def test_host_firmware_state_declares_flash_and_ram(broker, topic_prefix, tmp_path):
    _require_mosquitto_dev()
    from edgeops.firmware.build import build_host
    from edgeops.firmware.host import HostConfig, HostFirmware
    from edgeops.mqtt import MqttClient

    binary = build_host(tmp_path / "bin")
    dk = generate_device_key(tmp_path / "keys", "mcu-mem")
    config = HostConfig(
        device="mcu-mem",
        fleet=topic_prefix,
        broker=broker.url,
        hmac_key_id=dk.key_id,
        hmac_key_b64=dk.key_b64,
        keepalive=5,
        flash_bytes=1048576,
        ram_bytes=262144,
    )
    fw = HostFirmware(binary, tmp_path / "fw", config).start()
    client = MqttClient(broker.url).connect()
    try:
        deadline = time.monotonic() + 30
        state = None
        while state is None and time.monotonic() < deadline:
            msgs = client.retained(device_topic(topic_prefix, "mcu-mem", "state"), quiet=0.3)
            docs = [json.loads(m.payload) for m in msgs]
            state = next((d for d in docs if d.get("online")), None)
        assert state is not None, fw.log()
        assert (state["flash_bytes"], state["ram_bytes"]) == (1048576, 262144)
    finally:
        client.close()
        fw.stop()


def test_every_template_file_is_package_data():
    """A wheel installs the templates (``edgeops firmware generate`` copies them): every
    file under them matches a package-data pattern of pyproject.toml."""
    import glob

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    root = Path(__file__).resolve().parents[1]
    conf = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = conf["tool"]["setuptools"]["package-data"]["edgeops"]
    package = root / "src" / "edgeops"
    covered = {Path(f) for pat in patterns for f in glob.glob(str(package / pat), recursive=True)}
    files = {f for f in templates_dir().rglob("*") if f.is_file() and "__pycache__" not in f.parts}
    assert templates_dir() == package / "firmware" / "templates"
    assert len(files) > 50 and files <= covered, sorted(map(str, files - covered))
