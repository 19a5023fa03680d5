"""The C firmware templates, built with gcc and checked against the Python reference.

Pure parts through the conformance tool (firmware/templates/tools): SHA-256 and
HMAC against hashlib, Python's float repr, the JSON reader on protocol messages,
the canonical JSON the server signs, the manifest checks, telemetry windows
against WindowStats, the two-copy state record, and the loadable emlearn models
against emlearn's C. Then the host firmware as a process on Mosquitto: it joins a
real rollout next to a Python agent, serves the emlearn reference's predictions,
and its telemetry passes the real collector; a corrupted chunk, a bad HMAC and a
replayed (lower seq) manifest are each rejected while the old model keeps serving.
Its samples (within the budget) and labels are stored by the real collector and
re-scored by the skew check; a firmware with compiled-in fitted features rejects a
manifest with other ones; the flash and RAM it declares reach `edgeops fleet list`.
Downloads that resume after a kill: test_firmware_resume.py.

Needs gcc, emlearn (the ``mcu`` extra) and libmosquitto-dev; fails, not skips,
without the first two, and without libmosquitto in CI.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import random
import re
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgeops import Workspace
from edgeops.convert.emlearn_c import EmlearnCRunner, sklearn_to_emlearn_c
from edgeops.datasets import digits_frame, write_table
from edgeops.firmware.artifact import emlearn_loadable, read_header
from edgeops.firmware.build import (
    HOST_DEFINES,
    build_conformance,
    build_host,
    compile_check,
    core_sources,
    port_sources,
    templates_dir,
)
from edgeops.firmware.host import HostConfig, HostFirmware
from edgeops.firmware.signing import (
    LOADABLE_VARIANT,
    FirmwareRolloutController,
    generate_device_key,
    load_device_keys,
)
from edgeops.firmware.variants import add_loadable_variant
from edgeops.fleet.controller import RolloutOptions
from edgeops.fleet.deploy import ManifestOptions, build_manifest
from edgeops.fleet.keys import generate_key
from edgeops.mqtt import MqttClient
from edgeops.pipeline import parse_pipeline
from edgeops.pipeline.check import variant_predict
from edgeops.pipeline.run import run_pipeline
from edgeops_protocol.chunks import describe_chunks
from edgeops_protocol.manifest import (
    DeviceFacts,
    Rejected,
    canonical_json,
    check_manifest,
    verify_envelope,
)
from edgeops_protocol.messages import parse_state, parse_telemetry
from edgeops_protocol.stats import WindowStats
from edgeops_protocol.topics import device_topic
from firmware_kit import Collecting, Watcher, wait_until
from firmware_kit import publish_deployment as _publish_deployment
from firmware_kit import require_mosquitto_dev as _require_mosquitto_dev
from firmware_kit import sign_envelope as _sign

# --- builds ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool(tmp_path_factory) -> Path:
    return build_conformance(tmp_path_factory.mktemp("fw-tool"))


@pytest.fixture(scope="module")
def firmware_bin(tmp_path_factory) -> Path:
    _require_mosquitto_dev()
    return build_host(tmp_path_factory.mktemp("fw-host"))


def ask(tool: Path, lines: list[str]) -> list[str]:
    done = subprocess.run(
        [str(tool)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True
    )
    out = done.stdout.splitlines()
    assert len(out) == len(lines), done.stderr
    return out


# --- every C file compiles with -Werror ---------------------------------------------------


def _c_files() -> list[tuple[str, Path]]:
    root = templates_dir()
    files = [("core", p) for p in core_sources(root)]
    files += [("tools", p) for p in sorted((root / "tools").glob("*.c"))]
    files += [("host", p) for p in port_sources("host", root)]
    return files


@pytest.mark.parametrize("part,source", _c_files(), ids=lambda v: getattr(v, "name", v))
def test_every_c_file_compiles_with_werror(part, source, tmp_path):
    if part == "host":
        _require_mosquitto_dev()
        includes = [templates_dir() / "ports" / "host"]
        compile_check(source, tmp_path / "o.o", includes=includes, defines=HOST_DEFINES)
        return
    # the core and the tool build without any POSIX feature macro: nothing POSIX in them,
    # which is what lets the core build for ESP-IDF and Zephyr; and with a small MCU profile
    compile_check(source, tmp_path / "o.o")
    small = [
        "-DEDGEOPS_MANIFEST_MAX_BYTES=16384u",
        "-DEDGEOPS_JSON_MAX_TOKENS=1024u",
        "-DEDGEOPS_MODEL_MAX_BYTES=32768u",
        "-DEDGEOPS_MAX_CHUNKS=32u",
        "-DEDGEOPS_MAX_FEATURES=64u",
        "-DEDGEOPS_MAX_EDGE_VALUES=768u",
        "-DEDGEOPS_OUTBOX_BYTES=4096u",
        "-DEDGEOPS_MESSAGE_MAX_BYTES=4096u",
    ]
    if part == "core":
        compile_check(source, tmp_path / "small.o", defines=small, extra=["-Os"])


def test_core_uses_no_posix_or_allocation():
    for source in core_sources():
        text = source.read_text()
        for banned in ("unistd.h", "pthread", "<sys/", "malloc(", "calloc(", "realloc(", "free("):
            assert banned not in text, f"{source.name} uses {banned}"


# --- SHA-256, HMAC, base64, CRC-32 ---------------------------------------------------------


def test_sha256_and_hmac_match_hashlib(tool):
    rng = random.Random(7)
    sizes = [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096, 100_003]
    sizes += [rng.randrange(0, 3000) for _ in range(40)]
    datas = [rng.randbytes(n) for n in sizes]
    keys = [rng.randbytes(rng.choice([0, 1, 16, 32, 63, 64, 65, 100, 200])) for _ in datas]
    lines = [f"sha256 {d.hex()}" for d in datas] + [
        f"hmac {k.hex()} {d.hex()}" for k, d in zip(keys, datas, strict=True)
    ]
    out = ask(tool, lines)
    assert out[: len(datas)] == [hashlib.sha256(d).hexdigest() for d in datas]
    assert out[len(datas) :] == [
        hmac.new(k, d, hashlib.sha256).hexdigest() for k, d in zip(keys, datas, strict=True)
    ]


def test_base64_and_crc32_match_python(tool):
    import zlib

    rng = random.Random(3)
    datas = [rng.randbytes(n) for n in (0, 1, 2, 3, 4, 31, 32, 33, 100)]
    lines = [f"b64 {base64.b64encode(d).decode()}" for d in datas]
    lines += ["b64 abc", "b64 ab=c", "b64 a===", "b64 ab$="]
    lines += [f"crc32 {d.hex()}" for d in datas]
    out = ask(tool, lines)
    n = len(datas)
    assert out[:n] == [f"ok {d.hex()}" for d in datas]
    assert out[n : n + 4] == ["error"] * 4
    assert out[n + 4 :] == [str(zlib.crc32(d)) for d in datas]


# --- numbers and JSON ----------------------------------------------------------------------


def test_double_formatting_is_pythons_repr(tool):
    rng = random.Random(11)
    values = [0.0, -0.0, 0.1, 0.5, 1.0, -2.5, 1e16, 1e15, 123456789012345678.0, 1e-4, 1e-5]
    values += [1.5e-7, 5e-324, 1.7976931348623157e308, 2.0**53, 0.3, 1 / 3, 1795760000.123]
    values += [rng.uniform(-1e6, 1e6) for _ in range(300)]
    values += [rng.random() * 10 ** rng.randint(-30, 30) for _ in range(300)]
    while len(values) < 1200:
        v = struct.unpack("<d", rng.randbytes(8))[0]
        if math.isfinite(v):
            values.append(v)
    out = ask(tool, [f"repr {struct.pack('<d', v).hex()}" for v in values])
    assert out == [repr(v) for v in values]


def _strict(text: bytes):
    def no_constants(name):
        raise ValueError(name)

    return json.loads(text.decode("utf-8"), parse_constant=no_constants)


BAD_JSON = [
    b"",
    b"{",
    b'{"a":1,}',
    b"[1,2,]",
    b'{"a" 1}',
    b"{'a': 1}",
    b"[01]",
    b"[1.]",
    b"[.5]",
    b"[1e]",
    b"[-]",
    b"[NaN]",
    b"[Infinity]",
    b'["\x01"]',
    b'["\\x"]',
    b'["\\u12"]',
    b'["\xff"]',
    b'["\xc0\xaf"]',
    b'["\xed\xa0\x80"]',
    b"[tru]",
    b"[1] [2]",
    b'"unterminated',
]


def test_json_reader_accepts_protocol_messages_and_refuses_bad_json(tool):
    deep = b"[" * 40 + b"]" * 40  # legal JSON, deeper than EDGEOPS_JSON_MAX_DEPTH (24)
    good = [
        b'{"protocol": 1, "type": "state", "fleet": "lab", "device": "pi-07", "online": false}',
        json.dumps({"protocol": 1, "type": "event", "event": "downloading", "progress": 0.5,
                    "reason": "caf\u00e9 \U0001f600 \"q\" \\ /", "deployment": None}).encode(),
        json.dumps({"stats": {"features": [[0, 51, 49, 2]] * 64, "latency_sum_ms": 812.4}},
                   indent=2).encode(),
        b' \t\n[1, -0, 0.5e-3, 1E+2, -12.75, true, false, null, "\\u00e9\\ud83d\\ude00"]\r\n',
    ]  # fmt: skip
    out = ask(tool, [f"parse {t.hex()}" for t in [*good, *BAD_JSON, deep]])
    assert all(o.startswith("ok ") for o in out[: len(good)]), out
    assert all(o.startswith("error") for o in out[len(good) :]), out
    for text in BAD_JSON:  # the Python side refuses the same ones
        with pytest.raises(ValueError):
            _strict(text)


def _random_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bool", "null"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 7, 2**53, -(2**63), 10**30, rng.randint(-(10**9), 10**9)])
    if kind == "float":
        return rng.choice([0.0, -0.0, 0.1, 1e16, 1e-7, -2.5, rng.uniform(-1e9, 1e9), 1e300])
    if kind == "str":
        alphabet = 'abcXYZ_ -"\\/\n\t\x00\x1f\x7f\u00e9\u2028\uffff\U0001f600\U0010ffff'
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = {"".join(rng.choice("ab\u00e9\U0001f600Z_") for _ in range(rng.randint(0, 3)))
            for _ in range(rng.randint(0, 5))}  # fmt: skip
    return {k: _random_value(rng, depth + 1) for k in keys}


def test_canonical_json_is_byte_for_byte_pythons(tool):
    rng = random.Random(5)
    texts = []
    for i in range(150):
        value = {"v": _random_value(rng), "n": i}
        style = i % 3
        if style == 0:
            texts.append(json.dumps(value).encode())  # how the controller publishes
        elif style == 1:
            texts.append(json.dumps(value, ensure_ascii=False, indent=1).encode("utf-8"))
        else:
            texts.append(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())
    texts.append(b'{"b": 1.50, "a": [1E2, -0, 0.000001, 1e-7, 12345678901234567890.0]}')
    out = ask(tool, [f"canon {t.hex()}" for t in texts])
    for text, answer in zip(texts, out, strict=True):
        assert answer == f"ok {canonical_json(json.loads(text)).hex()}", text
    duplicate = b'{"a": 1, "a": 2}'
    dup = ask(tool, [f"canon {duplicate.hex()}"])
    assert dup == ["error"]  # Python would keep the last one: a signed manifest has none


# --- a registered model, keys, manifests -----------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A workspace with two versions of a digits forest (onnx-f32, c-emlearn, and the
    loadable emlearn variant) and the emlearn reference of each."""
    home = tmp_path_factory.mktemp("fw-ws")
    ws, _ = Workspace.init(home)
    write_table(digits_frame(), home / "digits.csv")
    ws.data.add(home / "digits.csv", "digits")
    for seed, depth in ((0, 6), (1, 8)):
        doc = {
            "name": "digits",
            "data": "digits@1",
            "label": "label",
            "model": {
                "kind": "random_forest",
                "params": {"n_estimators": 8, "max_depth": depth},
                "seed": seed,
            },
            "export": ["onnx-f32", "c-emlearn"],
        }
        text = yaml.safe_dump(doc)
        assert run_pipeline(ws, parse_pipeline(doc, text)).status == "registered"
        add_loadable_variant(ws, f"digits@{1 + seed}")
    ws.close()
    return home


def _reference(ws, ref: str, X: np.ndarray) -> np.ndarray:
    mv = ws.registry.get_version(ref)
    variant = next(v for v in mv.variants if v.name == "c-emlearn")
    predict, close = variant_predict(variant, ws.registry.variant_bytes(ref, "c-emlearn"), 64)
    try:
        return predict(X)
    finally:
        close()


def _digits() -> np.ndarray:
    return digits_frame().drop(columns="label").to_numpy(dtype=np.float32)


def _envelope(mv, variant, data, *, fleet, device, seq, key, now=None, chunk_size=4096, **over):
    manifest = build_manifest(
        fleet=fleet,
        device=device,
        seq=seq,
        rollout=None,
        mv=mv,
        variant=variant,
        data=data,
        hardware=["*"],
        opts=ManifestOptions(chunk_size=chunk_size),
        now=now,
    )
    manifest.update(over)
    return _sign(manifest, key)


def test_manifest_checks_match_the_python_agent(tool, models, tmp_path):
    ws = Workspace.open(models)
    mv = ws.registry.get_version("digits@1")
    variant = next(v for v in mv.variants if v.name == LOADABLE_VARIANT)
    data = ws.registry.variant_bytes(mv.ref, variant.name)
    key = generate_device_key(tmp_path / "keys", "mcu-1")
    other = generate_device_key(tmp_path / "keys", "mcu-2")
    now = time.time()

    def env(**over):
        kw = {"fleet": "lab", "device": "mcu-1", "seq": 5, "key": key, "now": now}
        kw.update({k: over.pop(k) for k in list(over) if k in kw})
        return _envelope(mv, variant, data, **kw, **over)

    good = env()
    tampered = json.loads(json.dumps(good))
    tampered["manifest"]["model"]["version"] = 2
    cases = {
        "act": (good, 4),
        "already": (good, 5),
        "replay": (good, 9),
        "ignored": (env(device="mcu-2", key=other), 0),
        "tampered": (tampered, 0),
        "wrong key": (env(key=other), 0),
        "expired": (env(issued_at=now - 100, expires_at=now - 1), 0),
        "hardware": (env(target={"hardware": ["esp32"], "runtime": ["emlearn"]}), 0),
        "runtime": (
            env(
                model={**good["manifest"]["model"], "format": "onnx", "runtime": "onnx"},
                target={"hardware": ["*"], "runtime": ["onnx"]},
            ),
            0,
        ),
        "too big": (env(artifact={**describe_chunks(b"x" * (2 << 20), 65536)}), 0),
        "malformed": (env(seq=0), 0),
    }
    lines = [
        f"manifest lab mcu-1 host-sim {key.key_id} {key.key.hex()} {accepted} {now} "
        f"{json.dumps(e).encode().hex()}"
        for e, accepted in cases.values()
    ]
    got = dict(zip(cases, ask(tool, lines), strict=True))
    assert got["act"] == "act"
    assert got["already"] == "already"
    assert got["ignored"] == "ignored"
    facts = DeviceFacts("lab", "mcu-1", "host-sim", ("emlearn",), 1 << 20)
    for name in ("replay", "expired", "hardware", "runtime", "too big"):
        manifest = cases[name][0]["manifest"]
        with pytest.raises(Rejected) as exc:
            check_manifest(manifest, facts, cases[name][1], now)
        assert got[name].startswith("rejected "), (name, got[name])
        python_reason = str(exc.value)
        firmware_reason = got[name][len("rejected ") :]
        assert firmware_reason.split(" ")[:2] == python_reason.split(" ")[:2], name
    assert got["replay"] == "rejected replayed manifest: seq 5 is below the accepted 9"
    assert got["tampered"] == "rejected bad signature"
    assert got["wrong key"].startswith("rejected unknown HMAC key")
    assert got["malformed"] == "rejected malformed manifest: manifest.seq must be >= 1"
    ws.close()


# --- telemetry windows, the state record, the models ------------------------------------------


def test_telemetry_windows_equal_window_stats(tool):
    from edgeops_protocol.baseline import baseline_profile

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5)).astype(np.float32)
    X[:, 3] = np.round(X[:, 3])  # values on the edges
    outs = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 300)]
    base = baseline_profile(X, outs, [f"f{j}" for j in range(5)], ["a", "b", "c", "d"])
    serving = {"labels": ["a", "b", "c", "d"], "baseline": base}
    rows = []
    window = WindowStats(base)
    for i in range(400):
        x = rng.normal(scale=1.5, size=5).astype(np.float32)
        if i % 17 == 0:
            x[1] = np.nan
        if i % 5 == 0:
            x[3] = np.float32(base["features"][3]["edges"][i % 3])  # exactly on an edge
        latency = float(rng.integers(0, 4000)) / 8.0  # sums stay exact in both
        if i % 23 == 0:
            out = None
        elif i % 19 == 0:
            out = np.array([np.nan, 0.1, 0.2, 0.3], dtype=np.float32)
        else:
            out = rng.dirichlet(np.ones(4)).astype(np.float32)
        window.update(x, out, latency_ms=latency, error=out is None)
        rows.append({
            "x": [None if np.isnan(v) else float(v) for v in x],
            "out": None if out is None else [None if np.isnan(v) else float(v) for v in out],
            "latency": latency,
        })  # fmt: skip
    spec = {"serving": serving, "n_features": 5, "n_outputs": 4, "rows": rows}
    (answer,) = ask(tool, [f"stats {json.dumps(spec).encode().hex()}"])
    assert answer.startswith("ok ")
    assert json.loads(answer[3:]) == window.window()


def test_state_record_survives_a_torn_write(tool):
    # generations 1..3 written, the 4th torn mid-write: the 3rd is what loads; then a good write
    assert ask(tool, ["state"]) == ["ok 3 5"]


@pytest.mark.parametrize("kind", ["forest", "tree", "extra-trees", "mlp"])
def test_loadable_models_agree_exactly_with_emlearn_c(tool, kind, digits):
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.tree import DecisionTreeClassifier

    X_train, X_test, y_train, _ = digits
    estimator = {
        "forest": RandomForestClassifier(n_estimators=10, max_depth=8, random_state=0),
        "tree": DecisionTreeClassifier(random_state=0),
        "extra-trees": ExtraTreesClassifier(n_estimators=5, random_state=0),
        "mlp": MLPClassifier(hidden_layer_sizes=(32,), random_state=0, max_iter=300),
    }[kind].fit(X_train, y_train)
    data = emlearn_loadable(estimator)
    assert read_header(data).n_features == 64
    X = np.concatenate([X_test, X_train]).astype("<f4")
    with EmlearnCRunner(sklearn_to_emlearn_c(estimator, "m"), "m", 64) as runner:
        expected = runner.predict(X)
    (answer,) = ask(tool, [f"model c-emlearn {data.hex()} {X.tobytes().hex()}"])
    assert answer.startswith("ok "), answer
    got = np.array([int(c) for c in answer[3:].split(",")])
    assert np.array_equal(got, expected)
    assert np.array_equal(got, estimator.predict(X))
    # the C source form is refused with a reason, and so is a corrupt artifact
    (src,) = ask(tool, [f"model c-emlearn {b'/* C */'.hex()} {X[:1].tobytes().hex()}"])
    assert src.startswith("error the artifact is emlearn C source")
    bad = bytearray(data)
    bad[32:36] = struct.pack("<i", 999)  # the first node reads feature 999
    (corrupt,) = ask(tool, [f"model c-emlearn {bytes(bad).hex()} {X[:1].tobytes().hex()}"])
    assert corrupt.startswith("error the emlearn artifact is invalid") or kind == "mlp"


# --- the host firmware on Mosquitto ---------------------------------------------------------


@pytest.fixture
def fleet(models, broker, topic_prefix, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPS_MQTT_URL", broker.url)
    monkeypatch.setenv("EDGEOPS_FLEET", topic_prefix)
    ws = Workspace.open(models)
    key = generate_key(tmp_path / "keys")
    client = MqttClient(broker.url).connect()
    watcher = Watcher(broker.url, topic_prefix)
    yield ws, key, client, watcher
    watcher.close()
    client.close()
    ws.close()


def _firmware(binary, tmp_path, broker, fleet_name, device, keys_dir, **kw) -> HostFirmware:
    dk = generate_device_key(keys_dir, device)
    config = HostConfig(
        device=device,
        fleet=fleet_name,
        broker=broker.url,
        hmac_key_id=dk.key_id,
        hmac_key_b64=dk.key_b64,
        tags=("lab", "mcu"),
        keepalive=5,
        download_stall_s=1.0,
        **kw,
    )
    return HostFirmware(binary, tmp_path / device, config).start()


def test_firmware_joins_a_rollout_next_to_a_python_agent(fleet, firmware_bin, broker, tmp_path):
    from test_rollout_e2e import Agents as PythonAgents

    ws, key, client, watcher = fleet
    name = ws.settings.fleet
    keys_dir = tmp_path / "device-keys"
    fw = _firmware(firmware_bin, tmp_path, broker, name, "mcu-0", keys_dir, window_count=100)
    agents = PythonAgents(tmp_path / "agents", broker, name, key.public)
    collecting = Collecting(ws, broker, name)
    try:
        agents.config("pi-0")
        agents.start("pi-0")
        ctl = FirmwareRolloutController(ws, key, client, device_keys=load_device_keys(keys_dir))

        def online():
            ctl.fleet.sync(client, quiet=0.3)
            return sum(d.online for d in ctl.fleet.devices()) >= 2

        wait_until(online, what="the firmware and the agent online")
        assert ctl.fleet.get("mcu-0").state["runtimes"] == ["emlearn"]
        rid = ctl.create("digits@1", "tag:lab", RolloutOptions(stages=(1.0,), timeout=60))
        ctl.run(
            until=lambda: ctl.status(rid)["status"] in ("completed", "aborted"), max_seconds=120
        )
        st = ctl.status(rid)
        assert st["status"] == "completed", (st, fw.log()[-3000:])
        assert st["counts"]["activated"] == 2
        ctl.fleet.sync(client, quiet=0.3)
        mcu = ctl.fleet.get("mcu-0").state
        assert mcu["model"]["version"] == 1 and mcu["model"]["variant"] == LOADABLE_VARIANT
        assert ctl.fleet.get("pi-0").state["model"]["variant"] == "onnx-f32"
        kinds = [e.event for e in reversed(ctl.fleet.events(device="mcu-0", rollout=rid))]
        assert kinds[0] == "downloading" and "verified" in kinds and kinds[-1] == "activated"

        # predictions: exactly the emlearn reference (the c-emlearn variant compiled by gcc)
        X = _digits()
        expected = _reference(ws, "digits@1", X)
        answers = fw.predict(X.tolist())
        got = np.array([a["class"] for a in answers])
        assert np.array_equal(got, expected)
        assert [a["label"] for a in answers[:20]] == [str(c) for c in expected[:20]]

        # telemetry: 17 full windows of 100, each accepted by the real collector, and equal
        # (but for latency) to the Python WindowStats over the same predictions
        n_windows = len(X) // 100
        from edgeops.monitoring.store import MonitoringStore

        store = MonitoringStore(ws.db, name)
        wait_until(
            lambda: len(store.windows("digits@1", device="mcu-0")) >= n_windows,
            what="the firmware's windows in the collector's store",
        )
        # events are stored by both the collector and the rollout controller: whichever is
        # second counts a duplicate; nothing else may be turned away
        assert set(collecting.collector.rejected) <= {"duplicate"}, collecting.collector.rejected
        watcher.pump(1.0)
        windows = sorted((parse_telemetry(p) for p in watcher.telemetry), key=lambda w: w["seq"])
        windows = [w for w in windows if w["device"] == "mcu-0"]
        assert [w["seq"] for w in windows] == list(range(1, n_windows + 1))
        baseline = ws.registry.variant("digits@1", LOADABLE_VARIANT).meta["baseline"]
        first = WindowStats(baseline)
        for x, c in zip(X[:100], expected[:100], strict=True):
            first.update(x, np.eye(10, dtype=np.float32)[c], latency_ms=0.0)
        mine, python = windows[0]["stats"], first.window()
        for field in ("count", "features", "feature_non_finite", "class_counts",
                      "confidence_counts", "errors", "non_finite_outputs"):  # fmt: skip
            assert mine[field] == python[field], field
        assert (
            windows[0]["model"]["sha256"]
            == ws.registry.variant("digits@1", LOADABLE_VARIANT).sha256
        )

        # re-signing before expiry keeps each device's kind of signature
        assert ctl.resign_expiring(time.time(), margin=1e12) == 2
        assert env_of(client, name, "pi-0")["signature"]["alg"] == "ed25519"
        resigned = env_of(client, name, "mcu-0")
        assert resigned["signature"]["alg"] == "hmac-sha256"
        keys = {k.key_id: k.key for k in load_device_keys(keys_dir).values()}
        assert verify_envelope(resigned, hmac_keys=keys)["seq"] == mcu["model"]["seq"]
        time.sleep(1.0)
        assert not watcher.event("mcu-0", "rejected")  # the same seq again: ignored
    finally:
        collecting.stop()
        agents.stop_all()
        fw.stop()


def env_of(client, fleet_name: str, device: str) -> dict:
    (msg,) = client.retained(device_topic(fleet_name, device, "desired"))
    return json.loads(msg.payload)


def test_bad_chunk_bad_hmac_and_replay_are_rejected_and_the_old_model_keeps_serving(
    fleet, firmware_bin, broker, tmp_path
):
    ws, _key, client, watcher = fleet
    name = ws.settings.fleet
    keys_dir = tmp_path / "device-keys"
    fw = _firmware(firmware_bin, tmp_path, broker, name, "mcu-1", keys_dir, download_timeout_s=3.0)
    dk = load_device_keys(keys_dir)["mcu-1"]
    X = _digits()[:200]
    try:
        wait_until(lambda: watcher.pump() or "mcu-1" in watcher.states, what="the firmware online")
        versions = {}
        for ref in ("digits@1", "digits@2"):
            mv = ws.registry.get_version(ref)
            variant = next(v for v in mv.variants if v.name == LOADABLE_VARIANT)
            versions[ref] = (mv, variant, ws.registry.variant_bytes(ref, variant.name))

        def envelope(ref, seq, key=dk):
            mv, variant, data = versions[ref]
            return _envelope(mv, variant, data, fleet=name, device="mcu-1", seq=seq, key=key)

        # v1 arrives (chunks out of order, one repeated) and serves
        _publish_deployment(client, name, envelope("digits@1", 10), versions["digits@1"][2])
        assert wait_until(lambda: watcher.event("mcu-1", "activated", 10), what="v1 activated")
        v1 = _reference(ws, "digits@1", X)
        v2 = _reference(ws, "digits@2", X)
        assert not np.array_equal(v1, v2)  # so serving v1 is visible

        def serving(expected):
            return np.array_equal([a["class"] for a in fw.predict(X.tolist())], expected)

        assert serving(v1)

        # 1. a corrupted chunk: the download never completes; failed at step download
        _publish_deployment(client, name, envelope("digits@2", 11), versions["digits@2"][2], 1)
        failed = wait_until(lambda: watcher.event("mcu-1", "failed", 11), what="failed")
        assert failed["step"] == "download"
        assert "chunks 1 failed their SHA-256 check" in failed["reason"]
        assert serving(v1)

        # 2. a bad HMAC (a manifest changed after signing): rejected, nothing else happens
        tampered = envelope("digits@2", 12)
        tampered["manifest"]["health"]["atol"] = 5.0
        client.publish_all([(device_topic(name, "mcu-1", "desired"),
                             json.dumps(tampered).encode(), True)])  # fmt: skip
        rejected = wait_until(lambda: watcher.event("mcu-1", "rejected", 12), what="rejected")
        assert rejected["reason"] == "bad signature"
        assert serving(v1)

        # 3. a replayed manifest with a lower seq: rejected
        _publish_deployment(client, name, envelope("digits@2", 9), versions["digits@2"][2])
        replay = wait_until(lambda: watcher.event("mcu-1", "rejected", 9), what="rejected")
        assert replay["reason"] == "replayed manifest: seq 9 is below the accepted 11"
        assert serving(v1)
        watcher.pump(0.5)
        state = watcher.states["mcu-1"]
        assert state["model"]["version"] == 1 and state["accepted_seq"] == 11
        assert not any(
            e["event"] == "activated" and e["seq"] != 10
            for e in watcher.events
            if e["device"] == "mcu-1"
        )

        # a good v2 then goes through, and survives a restart of the firmware
        _publish_deployment(client, name, envelope("digits@2", 13), versions["digits@2"][2])
        assert wait_until(lambda: watcher.event("mcu-1", "activated", 13), what="v2 activated")
        assert serving(v2)
        assert fw.stop() == 0
        fw.start()
        assert wait_until(lambda: serving(v2) if _answers(fw) else False, what="v2 after restart")
    finally:
        fw.stop()


def _answers(fw: HostFirmware) -> bool:
    try:
        return "class" in fw.predict([[0.0] * 64])[0]
    except RuntimeError:
        return False


def test_conformance_tool_documents_every_command():
    text = (templates_dir() / "tools" / "edgeops_conformance.c").read_text()
    handled = set(re.findall(r'strcmp\(line, "(\w+)"\)', text))
    documented = set(re.findall(r"^ \*   (\w+)", text, re.MULTILINE))
    assert handled == documented


# --- samples and labels from the firmware ---------------------------------------------------


def _manifest(ws, ref: str, *, fleet: str, device: str, seq: int, chunk_size: int = 4096):
    """The manifest a rollout would sign for ``ref``'s loadable variant, and its bytes."""
    mv = ws.registry.get_version(ref)
    variant = next(v for v in mv.variants if v.name == LOADABLE_VARIANT)
    data = ws.registry.variant_bytes(ref, variant.name)
    manifest = build_manifest(
        fleet=fleet,
        device=device,
        seq=seq,
        rollout=None,
        mv=mv,
        variant=variant,
        data=data,
        hardware=["*"],
        opts=ManifestOptions(chunk_size=chunk_size),
    )
    return manifest, data


def _seq_of(sample_id: str) -> int:
    return int(sample_id.rsplit("/", 1)[1])


def test_firmware_samples_within_the_budget_are_stored_labelled_and_rescored(
    fleet, firmware_bin, broker, tmp_path
):
    from edgeops.model_io import load_sklearn
    from edgeops.monitoring.service import MonitoringService
    from edgeops.monitoring.store import MonitoringStore
    from edgeops_protocol.messages import parse_label, parse_sample

    ws, _key, client, watcher = fleet
    name = ws.settings.fleet
    keys_dir = tmp_path / "device-keys"
    # the device's own budget is 5 samples an hour; the first manifest raises it to 12
    fw = _firmware(firmware_bin, tmp_path, broker, name, "mcu-s", keys_dir, window_count=100,
                   extra={"samples_per_hour": 5})  # fmt: skip
    dk = load_device_keys(keys_dir)["mcu-s"]
    collecting = Collecting(ws, broker, name)
    store = MonitoringStore(ws.db, name)
    X = _digits()[:300]
    y = digits_frame()["label"].to_numpy()[:300]
    try:
        wait_until(lambda: watcher.pump() or "mcu-s" in watcher.states, what="the firmware online")
        boot = watcher.states["mcu-s"]["boot"]
        manifest, data = _manifest(ws, "digits@1", fleet=name, device="mcu-s", seq=10)
        manifest["serving"]["sampling"] = {"per_hour": 12}
        _publish_deployment(client, name, _sign(manifest, dk), data)
        assert wait_until(lambda: watcher.event("mcu-s", "activated", 10), what="v1 activated")

        # a message budget: in the first hour every prediction is a candidate, so the first
        # 12 of 300 predictions are sampled and no more
        answers = fw.predict(X.tolist())
        sampled = [i for i, a in enumerate(answers) if "sample_id" in a]
        assert sampled == list(range(12))
        assert [answers[i]["sample_id"] for i in sampled] == [
            f"mcu-s/{boot}/{k}" for k in range(1, 13)
        ]
        wait_until(
            lambda: len(store.samples("digits@1", device="mcu-s", limit=None)) == 12,
            what="12 samples in the collector's store",
        )
        rows = sorted(store.samples("digits@1", device="mcu-s", limit=None),
                      key=lambda r: _seq_of(r.sample_id))  # fmt: skip
        expected = _reference(ws, "digits@1", X)
        for k, r in enumerate(rows):
            assert r.sample_id == answers[k]["sample_id"]
            assert r.variant == LOADABLE_VARIANT and r.input is None
            assert r.features == [float(v) for v in X[k]]
            assert r.outputs == np.eye(10)[expected[k]].tolist()
            assert r.predicted == str(expected[k]) == answers[k]["label"]
        watcher.pump(0.5)
        firmware_samples = [parse_sample(p) for p in watcher.samples]
        assert [s["seq"] for s in firmware_samples] == list(range(1, 13))
        assert {s["model"]["sha256"] for s in firmware_samples} == {manifest["artifact"]["sha256"]}

        # labels from the device for the first 6 samples; the collector attaches them
        for k in range(6):
            assert fw.label(rows[k].sample_id, str(y[k])) == {"ok": True}
        assert "error" in fw.label("mcu-other/1-0/1", "3")  # not one of its samples
        assert "error" in fw.label(rows[0].sample_id, "")

        def labelled_count() -> int:
            return len(store.samples("digits@1", device="mcu-s", labelled=True, limit=None))

        wait_until(lambda: labelled_count() == 6, what="6 labelled samples")
        labelled = {r.sample_id: r.label for r in store.samples("digits@1", labelled=True)}
        assert labelled == {rows[k].sample_id: str(y[k]) for k in range(6)}
        watcher.pump(0.5)
        assert [parse_label(p)["device"] for p in watcher.labels] == ["mcu-s"] * 6

        # the skew check re-runs the firmware's samples through the float model, and the
        # labels give the on-device accuracy
        skew = MonitoringService(ws).skew("digits@1", scope="device:mcu-s")
        original = load_sklearn(ws.registry.variant_bytes("digits@1", "original"))
        floats = original.predict(X[:12])
        assert skew["agreement"]["samples"] == 12
        overall = skew["agreement"]["overall"]
        assert overall["n"] == 12
        assert overall["agreeing"] == int(np.sum(floats.astype(int) == expected[:12]))
        accuracy = skew["accuracy"]
        assert accuracy["labelled"] == 6
        assert accuracy["overall"]["correct"] == int(np.sum(expected[:6] == y[:6]))

        # a byte budget (v2's serving.sampling: no message limit, 3,000 bytes an hour): samples
        # are taken until their bytes reach the budget; the one that crosses it still goes
        manifest2, data2 = _manifest(ws, "digits@2", fleet=name, device="mcu-s", seq=11)
        manifest2["serving"]["sampling"] = {"per_hour": 0, "bytes_per_hour": 3000}
        _publish_deployment(client, name, _sign(manifest2, dk), data2)
        assert wait_until(lambda: watcher.event("mcu-s", "activated", 11), what="v2 activated")
        answers2 = fw.predict(X.tolist())
        sampled2 = [i for i, a in enumerate(answers2) if "sample_id" in a]
        assert 2 <= len(sampled2) < 12 and sampled2 == list(range(len(sampled2)))

        def v2_samples():
            watcher.pump(0.2)
            return [p for p in watcher.samples if parse_sample(p)["model"]["version"] == 2]

        got = wait_until(
            lambda: len(v2_samples()) == len(sampled2) and v2_samples(), what="v2 samples"
        )
        sizes = [len(p) for p in got]
        assert sum(sizes[:-1]) < 3000 <= sum(sizes)
        assert [_seq_of(answers2[i]["sample_id"]) for i in sampled2] == list(
            range(13, 13 + len(sampled2))
        )
        wait_until(
            lambda: len(store.samples("digits@2", device="mcu-s", limit=None)) == len(sampled2),
            what="v2's samples stored",
        )
        # events are stored by both the collector and the rollout controller: whichever is
        # second counts a duplicate; nothing else may be turned away
        assert set(collecting.collector.rejected) <= {"duplicate"}, collecting.collector.rejected
    finally:
        collecting.stop()
        fw.stop()


# --- the feature transforms compiled in ------------------------------------------------------


@pytest.fixture(scope="module")
def features_firmware(models, tmp_path_factory):
    """The host firmware built with digits@1's fitted features as its compiled-in ones
    (what `edgeops firmware generate` writes into app/edgeops_board_config.h)."""
    from edgeops.firmware.project import features_fingerprint

    _require_mosquitto_dev()
    ws = Workspace.open(models)
    try:
        features = ws.registry.variant("digits@1", LOADABLE_VARIANT).meta["features"]
        v2 = ws.registry.variant("digits@2", LOADABLE_VARIANT).meta["features"]
    finally:
        ws.close()
    fingerprint = features_fingerprint(features)
    assert features_fingerprint(v2) == fingerprint  # same data, same split: same fit
    binary = build_host(
        tmp_path_factory.mktemp("fw-features"),
        config={"EDGEOPS_FEATURES_SHA256": f'"{fingerprint}"'},
    )
    return binary, features, fingerprint


def test_a_manifest_with_other_fitted_features_is_rejected_and_the_old_model_serves(
    fleet, features_firmware, broker, tmp_path
):
    import copy

    from edgeops.firmware.project import features_fingerprint

    binary, features, fingerprint = features_firmware
    ws, _key, client, watcher = fleet
    name = ws.settings.fleet
    keys_dir = tmp_path / "device-keys"
    fw = _firmware(binary, tmp_path, broker, name, "mcu-f", keys_dir)
    dk = load_device_keys(keys_dir)["mcu-f"]
    X = _digits()[:100]
    try:
        wait_until(lambda: watcher.pump() or "mcu-f" in watcher.states, what="the firmware online")
        # the same fitted features: activates
        manifest, data = _manifest(ws, "digits@1", fleet=name, device="mcu-f", seq=20)
        assert features_fingerprint(manifest["serving"]["features"]) == fingerprint
        _publish_deployment(client, name, _sign(manifest, dk), data)
        assert wait_until(lambda: watcher.event("mcu-f", "activated", 20), what="v1 activated")
        v1 = _reference(ws, "digits@1", X)
        v2 = _reference(ws, "digits@2", X)
        assert not np.array_equal(v1, v2)

        def serving(expected):
            return np.array_equal([a["class"] for a in fw.predict(X.tolist())], expected)

        assert serving(v1)
        # other fitted features (a changed spec; none at all): rejected, naming both hashes
        # (the firmware's canonical JSON hashes as Python's does), and v1 keeps serving
        other = copy.deepcopy(features)
        other["spec"]["name"] = f"{other['spec']['name']}-v2"
        for seq, changed in ((21, other), (22, None)):
            m2, data2 = _manifest(ws, "digits@2", fleet=name, device="mcu-f", seq=seq)
            m2["serving"]["features"] = changed
            _publish_deployment(client, name, _sign(m2, dk), data2)
            rejected = wait_until(lambda s=seq: watcher.event("mcu-f", "rejected", s),
                                  what=f"seq {seq} rejected")  # fmt: skip
            assert rejected["reason"] == (
                "feature transforms differ: the manifest's serving.features (sha256 "
                f"{features_fingerprint(changed)[:16]}) are not the ones compiled into this "
                f"firmware (sha256 {fingerprint[:16]}); generate and flash a firmware for this "
                "model's features"
            )
            assert serving(v1)
        watcher.pump(0.5)
        assert watcher.states["mcu-f"]["accepted_seq"] == 20  # a rejected seq is not accepted
        # v2 with the same fitted features goes through
        m3, data3 = _manifest(ws, "digits@2", fleet=name, device="mcu-f", seq=23)
        _publish_deployment(client, name, _sign(m3, dk), data3)
        assert wait_until(lambda: watcher.event("mcu-f", "activated", 23), what="v2 activated")
        assert serving(v2)
    finally:
        fw.stop()


def test_generated_board_config_carries_the_features_fingerprint():
    from edgeops.firmware.project import board_config_h, features_fingerprint

    assert features_fingerprint(None) == hashlib.sha256(b"null").hexdigest()
    fp = features_fingerprint({"b": [1.5, -0.0], "a": "x"})
    assert fp == hashlib.sha256(b'{"a":"x","b":[1.5,-0.0]}').hexdigest()
    text = board_config_h({"EDGEOPS_MAX_CHUNKS": 8}, "host", "m@1", "emlearn-loadable", fp)
    assert f'#define EDGEOPS_FEATURES_SHA256 "{fp}"' in text
    assert "EDGEOPS_FEATURES_SHA256" not in board_config_h({}, "host", "m@1", "v")


# --- flash and RAM the firmware declares, in the fleet registry ---------------------------------


def test_declared_flash_and_ram_reach_the_fleet_registry_and_fleet_list(
    fleet, firmware_bin, broker, tmp_path, models, monkeypatch
):
    from typer.testing import CliRunner

    from edgeops.cli import app
    from edgeops.cli._common import console

    monkeypatch.setattr(console, "_width", 200)  # one line per device
    from edgeops.fleet.store import FleetStore, device_summary
    from edgeops_protocol.topics import ProtocolError

    ws, _key, client, watcher = fleet
    name = ws.settings.fleet
    keys_dir = tmp_path / "device-keys"
    fw = _firmware(firmware_bin, tmp_path, broker, name, "mcu-m", keys_dir,
                   flash_bytes=1 << 20, ram_bytes=256 << 10)  # fmt: skip
    quiet = _firmware(firmware_bin, tmp_path, broker, name, "mcu-q", keys_dir)
    try:
        wait_until(
            lambda: watcher.pump() or {"mcu-m", "mcu-q"} <= set(watcher.states),
            what="both online",
        )
        # parse_state keeps them (the watcher parses with it)
        assert (watcher.states["mcu-m"]["flash_bytes"], watcher.states["mcu-m"]["ram_bytes"]) == (
            1 << 20,
            256 << 10,
        )
        assert "flash_bytes" not in watcher.states["mcu-q"]
        fs = FleetStore(ws.db, name)
        assert fs.sync(client) >= 2
        summary = device_summary(fs.get("mcu-m"))
        assert (summary["flash_bytes"], summary["ram_bytes"]) == (1 << 20, 256 << 10)
        assert device_summary(fs.get("mcu-q"))["flash_bytes"] is None
        result = CliRunner().invoke(
            app, ["-w", str(models), "fleet", "list", "--no-sync", "--json"]
        )
        assert result.exit_code == 0, result.output
        listed = {d["device"]: d for d in json.loads(result.output)}
        assert listed["mcu-m"]["ram_bytes"] == 256 << 10
        result = CliRunner().invoke(app, ["-w", str(models), "fleet", "list", "--no-sync"])
        assert result.exit_code == 0, result.output
        assert "flash / RAM" in result.output and "1024 KiB / 256 KiB" in result.output
    finally:
        fw.stop()
        quiet.stop()
    # anything but a positive integer is a malformed state
    base = {"protocol": 1, "type": "state", "fleet": "lab", "device": "d", "online": True,
            "boot": "b", "ts": 1.0, "hardware": "h", "runtimes": [], "accepted_seq": 0,
            "model": None, "previous": None}  # fmt: skip
    assert parse_state(json.dumps({**base, "ram_bytes": 4096}).encode())["ram_bytes"] == 4096
    for bad in (0, -1, 1.5, "4096", True):
        with pytest.raises(ProtocolError):
            parse_state(json.dumps({**base, "flash_bytes": bad}).encode())
