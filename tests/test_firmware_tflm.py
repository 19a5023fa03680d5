"""TFLite Micro over the air: the tflm variant, the host firmware's TFLM runner, a rollout.

A small Keras MLP is trained (twice, seeds 0 and 1) on the seeded sensor windows, its
``tflite-int8`` variant registered, and the ``tflm`` variant attached from it (the same
flatbuffer, format ``tflite``, runtime ``tflm``, with its measured arena). The host
firmware built with ``EDGEOPS_WITH_TFLM=1`` runs the real TFLite Micro interpreter of
the tflite-micro package in a coprocess (``ports/host/host_tflm.c`` and
``edgeops.firmware.tflm_worker``) behind the functions a board's runner implements.

Checked: the variant choice per device runtime; the core's int8 quantization and
dequantization against numpy; the runner against the tflite-micro interpreter (bit for
bit), across a crash of its worker; the board runner (``runners/tflm``) still compiles
against the core's interface (with stand-in TFLM headers: no TFLM C++ library here).
Then on Mosquitto: the firmware joins a real rollout, receives the flatbuffer in MQTT
chunks, activates it after its health check, predicts held-out rows exactly as the
tflite-micro interpreter does, and its telemetry windows are stored by the real
collector; a corrupted chunk fails the next deployment and the old model keeps serving.

Needs gcc, libmosquitto-dev, Mosquitto, TensorFlow and tflite-micro (fails, not skips,
without the Python packages).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edgeops import Workspace
from edgeops.convert.tflm import TFLMRunner, smallest_arena, tflite_to_c_array
from edgeops.errors import Conflict, InvalidInput
from edgeops.firmware.build import (
    HOST_DEFINES,
    build_host,
    build_program,
    compile_check,
    templates_dir,
)
from edgeops.firmware.host import HostConfig, HostFirmware
from edgeops.firmware.project import held_out
from edgeops.firmware.signing import (
    FirmwareRolloutController,
    generate_device_key,
    load_device_keys,
)
from edgeops.firmware.variants import add_tflm_variant
from edgeops.fleet.controller import RolloutOptions
from edgeops.fleet.deploy import (
    ManifestOptions,
    build_manifest,
    choose_fitting_variant,
    choose_variant,
)
from edgeops.fleet.keys import generate_key
from edgeops.monitoring.store import MonitoringStore
from edgeops.mqtt import MqttClient
from edgeops.pipeline import parse_pipeline
from edgeops.pipeline.run import run_pipeline
from edgeops_agent.runtime.tflite import dequantize, quantize
from edgeops_protocol.chunks import split_chunks
from edgeops_protocol.manifest import DeviceFacts, check_manifest
from edgeops_protocol.messages import parse_telemetry
from edgeops_protocol.stats import WindowStats
from edgeops_protocol.topics import chunk_topic, device_topic
from firmware_kit import Collecting, Watcher, wait_until
from firmware_kit import require_mosquitto_dev as _require_mosquitto_dev
from firmware_kit import sign_envelope as _signed
from pipeline_kit import trained_workspace

DEVICE = "mcu-tflm"
WINDOW = 16


# --- two Keras versions with their tflm variants ----------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return trained_workspace(
        tmp_path_factory.mktemp("tflm-ws"),
        "keras_mlp",
        {"hidden": [16], "epochs": 12},
        ["tflite-int8"],
        each=add_tflm_variant,
    )


def _flatbuffer(ws, ref: str) -> tuple[object, bytes]:
    variant = ws.registry.variant(ref, "tflm")
    return variant, ws.registry.variant_bytes(ref, "tflm")


def _reference(data: bytes, arena: int, X: np.ndarray) -> np.ndarray:
    """The tflite-micro interpreter's scores (the Python package, in this process)."""
    return TFLMRunner(data, arena, checked=True).predict(X).reshape(len(X), -1)


def _held_out(ws, ref: str) -> np.ndarray:
    mv = ws.registry.get_version(ref)
    return held_out(ws, mv, ws.registry.variant(ref, "tflm"), 1000).X


def test_tflm_variant_is_the_int8_flatbuffer_and_tflm_devices_get_it(models):
    ws = Workspace.open(models)
    try:
        mv = ws.registry.get_version("har@1")
        int8 = ws.registry.variant("har@1", "tflite-int8")
        tflm, data = _flatbuffer(ws, "har@1")
        # the same bytes as tflite-int8: one blob, one set of chunks on MQTT
        assert tflm.format == "tflite" and tflm.sha256 == int8.sha256 and data[4:8] == b"TFL3"
        assert tflm.meta["runtime"] == "tflm" and tflm.meta["quantization"] == "int8"
        inputs = np.asarray(tflm.meta["test_vectors"]["inputs"], np.float32)
        assert len(inputs) == 8
        arena = tflm.metrics["arena_bytes"]
        assert arena == smallest_arena(data, inputs) and 0 < arena <= 65536
        assert tflm.metrics["model_bytes"] == len(data)
        # health vectors as TFLite Micro computes them
        outputs = np.asarray(tflm.meta["test_vectors"]["outputs"], np.float32)
        assert np.array_equal(outputs, _reference(data, arena, inputs))
        assert tflm.meta["baseline"] == int8.meta["baseline"]
        with pytest.raises(Conflict, match="already has a variant 'tflm'"):
            add_tflm_variant(ws, "har@1")

        # which variant each kind of device is given
        def chosen(*runtimes):
            v = choose_variant(mv, {"runtimes": list(runtimes)})
            return None if v is None else v.name

        assert chosen("tflite-micro") == "tflm"
        assert chosen("emlearn", "tflite-micro") == "tflm"
        assert chosen("tflite-runtime") == "tflite-int8"
        assert chosen("ai-edge-litert", "tflite-micro") == "tflite-int8"  # TFLite first
        assert chosen("emlearn") is None
        assert choose_variant(mv, {"runtimes": ["tflite-micro"]}, "tflite-int8") is None
        assert choose_variant(mv, {"runtimes": ["tflite-runtime"]}, "tflm") is None
        c_tflm = SimpleNamespace(name="c-tflm", format="c-tflm", meta={"runtime": "tflm"})
        with pytest.raises(InvalidInput, match="c-tflm is the model as C source"):
            choose_variant(SimpleNamespace(ref="x@1", variants=[c_tflm]), {}, "c-tflm")
        without = SimpleNamespace(ref="x@1", variants=[int8, c_tflm])
        variant, why = choose_fitting_variant(without, {"runtimes": ["tflite-micro"]})
        assert variant is None
        assert why == (
            "no variant for its runtimes tflite-micro (TFLite Micro takes the tflm variant: "
            "attach it to x@1 with edgeops.firmware.variants.add_tflm_variant)"
        )

        # its manifest names format tflite and runtime tflm, and a TFLM device accepts it
        manifest = build_manifest(
            fleet="lab", device="mcu-1", seq=3, rollout=None, mv=mv, variant=tflm, data=data,
            hardware=["*"], opts=ManifestOptions(), now=time.time(),
        )  # fmt: skip
        assert manifest["model"] == {
            "name": "har", "version": 1, "variant": "tflm", "format": "tflite",
            "runtime": "tflm",
        }  # fmt: skip
        assert manifest["target"]["runtime"] == ["tflm"]
        assert manifest["artifact"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert manifest["health"]["atol"] == 0.1
        facts = DeviceFacts("lab", "mcu-1", "host-sim", ("emlearn", "tflite-micro"), 1 << 20)
        check_manifest(manifest, facts, 2, time.time())
        with pytest.raises(Exception, match="needs runtime tflm"):
            check_manifest(manifest, DeviceFacts("lab", "mcu-1", "h", ("emlearn",), 1 << 20), 2,
                           time.time())  # fmt: skip
    finally:
        ws.close()


# --- the core's int8 arithmetic, the host runner, the board runner's interface -------------

HARNESS = r"""
/* a test harness: edgeops_model_load / _predict with the host TFLM runner */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeops_model.h"

static uint8_t model[1u << 20];
static edgeops_model_t m;
static char line[1u << 16];

static float f32(const char *hex)
{
    const uint32_t u = (uint32_t)strtoul(hex, NULL, 16);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void put(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    printf(" %08lx", (unsigned long)u);
}

int main(int argc, char **argv)
{
    char reason[1024];
    static float x[256];
    static float scores[64];
    static int8_t q[256];
    FILE *f = fopen(argv[1], "rb");
    const size_t n = f != NULL ? fread(model, 1, sizeof model, f) : 0;
    if (f != NULL) {
        fclose(f);
    }
    if (edgeops_model_load(&m, argc > 2 ? argv[2] : "tflite", model, (uint32_t)n, reason,
                           sizeof reason) != EDGEOPS_OK) {
        printf("error %s\n", reason);
    } else {
        printf("loaded %lu %lu\n", (unsigned long)m.n_features, (unsigned long)m.n_outputs);
    }
    fflush(stdout);
    while (fgets(line, sizeof line, stdin) != NULL) {
        /* "q SCALE ZP X..." quantize, "d SCALE ZP Q..." dequantize, "p X..." predict;
         * floats as the hex of their bits */
        uint32_t k = 0;
        char *tok = strtok(line, " \n");
        const char op = tok[0];
        const float scale = op == 'p' ? 0.0f : f32(strtok(NULL, " \n"));
        const int32_t zp = op == 'p' ? 0 : (int32_t)strtol(strtok(NULL, " \n"), NULL, 10);
        while ((tok = strtok(NULL, " \n")) != NULL && k < 256) {
            if (op == 'd') {
                q[k++] = (int8_t)strtol(tok, NULL, 10);
            } else {
                x[k++] = f32(tok);
            }
        }
        if (op == 'q') {
            edgeops_model_quantize_int8(x, k, scale, zp, q);
            for (uint32_t i = 0; i < k; i++) {
                printf("%s%d", i ? " " : "", q[i]);
            }
        } else if (op == 'd') {
            edgeops_model_dequantize_int8(q, k, scale, zp, scores);
            for (uint32_t i = 0; i < k; i++) {
                put(scores[i]);
            }
        } else {
            int32_t cls = -1;
            const edgeops_err_t err = edgeops_model_predict(&m, x, k, scores, 64, &cls);
            if (err != EDGEOPS_OK) {
                printf("error %d", (int)err);
            } else {
                printf("%ld", (long)cls);
                for (uint32_t i = 0; i < m.n_outputs; i++) {
                    put(scores[i]);
                }
            }
        }
        printf("\n");
        fflush(stdout);
    }
    edgeops_model_unload(&m);
    return 0;
}
"""


def _hex(values) -> str:
    return " ".join(f"{struct.unpack('<I', struct.pack('<f', float(v)))[0]:08x}" for v in values)


def _floats(tokens: list[str]) -> np.ndarray:
    return np.array(
        [struct.unpack("<f", struct.pack("<I", int(t, 16)))[0] for t in tokens], np.float32
    )


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    root = templates_dir()
    folder = tmp_path_factory.mktemp("tflm-harness")
    (folder / "harness.c").write_text(HARNESS)
    sources = [root / "core" / n for n in ("edgeops_model.c", "edgeops_model_emlearn.c")]
    return build_program(
        [*sources, root / "ports" / "host" / "host_tflm.c", folder / "harness.c"],
        folder / "harness",
        includes=[root / "ports" / "host"],
        defines=[*HOST_DEFINES, "-DEDGEOPS_WITH_TFLM=1"],
    )


class Harness:
    def __init__(
        self, binary: Path, model: Path, fmt: str = "tflite", python: str = sys.executable
    ) -> None:
        env = {**os.environ, "EDGEOPS_TFLM_PYTHON": python}
        self.proc = subprocess.Popen(
            [str(binary), str(model), fmt],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.first = self.proc.stdout.readline().strip()

    def ask(self, line: str) -> list[str]:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().split()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)
        self.proc.stdout.close()


def test_int8_quantization_is_numpys(harness, tmp_path):
    rng = np.random.default_rng(0)
    h = Harness(harness, tmp_path / "none")
    try:
        assert h.first.startswith("error")  # no model file: the arithmetic still runs
        for scale, zp in ((0.02420539, 0), (0.1, -128), (0.00390625, 5), (3.0, 127)):
            s32 = np.float32(scale)
            ties = (np.arange(-140, 140, dtype=np.float32) + np.float32(0.5)) * s32
            values = np.concatenate(
                [
                    rng.normal(0, 3, 200).astype(np.float32),
                    ties,
                    np.array([0.0, -0.0, 1e30, -1e30, np.inf, -np.inf], np.float32),
                ]
            )
            for part in np.array_split(values, 4):
                got = h.ask(f"q {_hex([s32])} {zp} {_hex(part)}")
                assert [int(v) for v in got] == quantize(part, s32, zp, "int8").tolist()
            (nan,) = h.ask(f"q {_hex([s32])} {zp} {_hex([np.nan])}")
            assert int(nan) == zp  # NaN is taken as 0.0
            q = np.arange(-128, 128, dtype=np.int8)
            got = _floats(h.ask(f"d {_hex([s32])} {zp} {' '.join(map(str, q.tolist()))}"))
            assert got.tobytes() == dequantize(q, s32, zp).tobytes()
    finally:
        h.close()


def _worker_of(h: Harness) -> psutil.Process:
    (child,) = psutil.Process(h.proc.pid).children()
    return child


def test_host_runner_predicts_as_the_tflite_micro_interpreter(models, harness, tmp_path):
    ws = Workspace.open(models)
    try:
        variant, data = _flatbuffer(ws, "har@1")
        X = _held_out(ws, "har@1")
    finally:
        ws.close()
    path = tmp_path / "model.tflite"
    path.write_bytes(data)
    want = _reference(data, variant.metrics["arena_bytes"], X)
    h = Harness(harness, path)
    try:
        assert h.first == f"loaded {X.shape[1]} {want.shape[1]}"
        worker = _worker_of(h)
        assert worker.cmdline()[1:] == ["-m", "edgeops.firmware.tflm_worker"]
        for i, row in enumerate(X):
            if i == len(X) // 2:  # the worker dies: the next call starts one and reloads
                worker.kill()
            cls, *scores = h.ask(f"p {_hex(row)}")
            assert int(cls) == int(np.argmax(want[i]))
            assert _floats(scores).tobytes() == want[i].tobytes(), i
        assert _worker_of(h).pid != worker.pid
        got = h.ask(f"p {_hex(X[0][:-1])}")  # one feature short
        assert got[0] == "error"
    finally:
        h.close()
    # C source (the c-tflm variant) and other bytes are refused with a reason
    _header, source = tflite_to_c_array(data, "g_model")
    (tmp_path / "model.c").write_text(source)
    h = Harness(harness, tmp_path / "model.c")
    h.close()
    assert h.first.startswith("error the artifact is C source (the c-tflm variant")
    (tmp_path / "junk").write_bytes(b"\x00" * 64)
    h = Harness(harness, tmp_path / "junk")
    h.close()
    assert h.first == "error the artifact is not a TFLite flatbuffer (no TFL3 identifier)"
    # no Python to run TFLite Micro in: the load fails and says what to set
    h = Harness(harness, path, python=str(tmp_path / "no-python"))
    h.close()
    assert h.first == (
        f"error the TFLite Micro worker ({tmp_path / 'no-python'} -m "
        "edgeops.firmware.tflm_worker) did not start: it exited with code 127; set "
        "EDGEOPS_TFLM_PYTHON to a Python with edgeops and tflite-micro"
    )


STUB_TFLM = r"""
// stand-ins for the TFLM headers the board runner includes: the API it uses, nothing more
#pragma once
#include <cstddef>
#include <cstdint>
enum TfLiteStatus { kTfLiteOk = 0, kTfLiteError = 1 };
enum TfLiteType { kTfLiteNoType = 0, kTfLiteFloat32 = 1, kTfLiteInt8 = 9 };
struct TfLiteQuantizationParams { float scale; int32_t zero_point; };
union TfLitePtrUnion { int8_t* int8; float* f; };
struct TfLiteTensor { TfLiteType type; TfLitePtrUnion data; size_t bytes;
                      TfLiteQuantizationParams params; };
namespace tflite {
struct Model { uint32_t version() const { return 3; } };
inline const Model* GetModel(const void* p) { return static_cast<const Model*>(p); }
template <unsigned N> class MicroMutableOpResolver {
 public:
  TfLiteStatus AddFullyConnected() { return kTfLiteOk; }
  TfLiteStatus AddConv2D() { return kTfLiteOk; }
  TfLiteStatus AddDepthwiseConv2D() { return kTfLiteOk; }
  TfLiteStatus AddMaxPool2D() { return kTfLiteOk; }
  TfLiteStatus AddAveragePool2D() { return kTfLiteOk; }
  TfLiteStatus AddReshape() { return kTfLiteOk; }
  TfLiteStatus AddSoftmax() { return kTfLiteOk; }
  TfLiteStatus AddRelu() { return kTfLiteOk; }
  TfLiteStatus AddQuantize() { return kTfLiteOk; }
  TfLiteStatus AddDequantize() { return kTfLiteOk; }
  TfLiteStatus AddMean() { return kTfLiteOk; }
  TfLiteStatus AddLogistic() { return kTfLiteOk; }
};
class MicroInterpreter {
 public:
  template <unsigned N>
  MicroInterpreter(const Model*, const MicroMutableOpResolver<N>&, uint8_t*, size_t) {}
  TfLiteStatus AllocateTensors() { return kTfLiteOk; }
  TfLiteStatus Invoke() { return kTfLiteOk; }
  TfLiteTensor* input(size_t) { return &t_; }
  TfLiteTensor* output(size_t) { return &t_; }
 private:
  TfLiteTensor t_{};
};
}  // namespace tflite
"""


def test_board_runner_matches_the_core_interface(tmp_path):
    """runners/tflm/edgeops_model_tflm.cc against stand-in TFLM headers (its TFLM calls are
    not checked here: no TFLite Micro C++ library on this machine), and the core with
    EDGEOPS_WITH_TFLM=1, both with every warning an error."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    root = templates_dir()
    stub = tmp_path / "stub" / "tensorflow" / "lite"
    for header in ("micro/micro_interpreter.h", "micro/micro_mutable_op_resolver.h",
                   "schema/schema_generated.h"):  # fmt: skip
        (stub / header).parent.mkdir(parents=True, exist_ok=True)
        (stub / header).write_text(STUB_TFLM)
    done = subprocess.run(
        ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
         "-DEDGEOPS_WITH_TFLM=1", f"-I{tmp_path / 'stub'}", f"-I{root / 'core'}",
         str(root / "runners" / "tflm" / "edgeops_model_tflm.cc")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("edgeops_model.c", "edgeops_manifest.c"):
        compile_check(root / "core" / name, tmp_path / "o.o", defines=["-DEDGEOPS_WITH_TFLM=1"])
    _require_mosquitto_dev()
    compile_check(
        root / "ports" / "host" / "host_tflm.c",
        tmp_path / "h.o",
        includes=[root / "ports" / "host"],
        defines=[*HOST_DEFINES, "-DEDGEOPS_WITH_TFLM=1"],
    )


def test_generate_host_project_for_a_keras_model_uses_the_host_runner(models, tmp_path):
    from edgeops.firmware.project import generate
    from edgeops.firmware.testing import run_vectors

    _require_mosquitto_dev()
    ws = Workspace.open(models)
    try:
        result = generate(ws, "har@1", "host", tmp_path / "har")
        variant = ws.registry.variant("har@1", "tflm")
    finally:
        ws.close()
    out = tmp_path / "har"
    assert (result.variant, result.form) == ("tflm", "tflm")
    assert result.config["EDGEOPS_TFLM_ARENA_BYTES"] == 65536  # >= the measured arena
    assert variant.metrics["arena_bytes"] < 65536
    assert any("edgeops.firmware.tflm_worker" in n for n in result.notes)
    assert (
        '#define EDGEOPS_APP_MODEL_FORMAT "tflite"'
        in (out / "app" / "edgeops_model_data.h").read_text()
    )
    assert (out / "ports" / "host" / "host_tflm.c").is_file()
    assert "WITH_TFLM ?= 1" in (out / "Makefile").read_text()
    r = run_vectors(out)  # builds test/ and the firmware (make), runs the transforms
    assert r.passed, r
    assert {b["what"]: b["status"] for b in r.builds}["host firmware (gcc, libmosquitto)"] == "ok"
    symbols = subprocess.run(
        ["nm", str(out / "build" / "edgeops-firmware")], capture_output=True, text=True
    ).stdout
    assert " T edgeops_model_tflm_load" in symbols  # the host runner is in the firmware


# --- the host firmware on Mosquitto ----------------------------------------------------------


@pytest.fixture(scope="module")
def firmware_bin(tmp_path_factory) -> Path:
    _require_mosquitto_dev()
    return build_host(tmp_path_factory.mktemp("fw-tflm"), tflm=True)


def _deploy(client, fleet, envelope, data, corrupt_chunk=None) -> None:
    manifest = envelope["manifest"]
    items = []
    for i, chunk in enumerate(split_chunks(data, manifest["artifact"]["chunk_size"])):
        payload = bytes([chunk[0] ^ 0xFF]) + chunk[1:] if i == corrupt_chunk else chunk
        items.append((chunk_topic(fleet, manifest["artifact"]["sha256"], i), payload, True))
    client.publish_all(items[::-1])  # out of order: the firmware must not care
    topic = device_topic(fleet, manifest["device"], "desired")
    client.publish_all([(topic, json.dumps(envelope).encode(), True)])


def test_tflm_firmware_takes_the_flatbuffer_over_the_air(
    models, firmware_bin, broker, topic_prefix, tmp_path, monkeypatch
):
    monkeypatch.setenv("EDGEOPS_MQTT_URL", broker.url)
    monkeypatch.setenv("EDGEOPS_FLEET", topic_prefix)
    ws = Workspace.open(models)
    name = ws.settings.fleet
    keys_dir = tmp_path / "device-keys"
    dk = generate_device_key(keys_dir, DEVICE)
    config = HostConfig(
        device=DEVICE, fleet=name, broker=broker.url, hmac_key_id=dk.key_id,
        hmac_key_b64=dk.key_b64, tags=("lab", "mcu"), keepalive=5, window_count=WINDOW,
        download_stall_s=1.0, download_timeout_s=3.0,
    )  # fmt: skip
    fw = HostFirmware(firmware_bin, tmp_path / DEVICE, config).start()
    client = MqttClient(broker.url).connect()
    watcher = Watcher(broker.url, name)
    collecting = Collecting(ws, broker, name)
    try:
        v1, data1 = _flatbuffer(ws, "har@1")
        v2, data2 = _flatbuffer(ws, "har@2")
        X = _held_out(ws, "har@1")
        assert np.array_equal(X, _held_out(ws, "har@2"))  # the same split and features
        want1 = _reference(data1, v1.metrics["arena_bytes"], X)
        want2 = _reference(data2, v2.metrics["arena_bytes"], X)
        assert not np.array_equal(want1, want2)  # so which model serves is visible

        # a real rollout: the controller picks the tflm variant for this device
        ctl = FirmwareRolloutController(
            ws, generate_key(tmp_path / "keys"), client, device_keys=load_device_keys(keys_dir)
        )

        def online():
            ctl.fleet.sync(client, quiet=0.3)
            dev = ctl.fleet.get(DEVICE)
            return dev is not None and dev.online

        wait_until(online, what="the firmware online")
        assert ctl.fleet.get(DEVICE).state["runtimes"] == ["emlearn", "tflite-micro"]
        opts = RolloutOptions(stages=(1.0,), timeout=90, manifest=ManifestOptions(chunk_size=512))
        rid = ctl.create("har@1", "tag:mcu", opts)
        assert ctl.status(rid)["devices_detail"][DEVICE]["variant"] == "tflm"
        ctl.run(
            until=lambda: ctl.status(rid)["status"] in ("completed", "aborted"), max_seconds=120
        )
        st = ctl.status(rid)
        assert st["status"] == "completed", (st, fw.log()[-3000:])
        (msg,) = client.retained(device_topic(name, DEVICE, "desired"))
        manifest = json.loads(msg.payload)["manifest"]
        assert manifest["model"]["format"] == "tflite" and manifest["model"]["runtime"] == "tflm"
        n_chunks = len(manifest["artifact"]["chunks"])
        assert n_chunks == -(-len(data1) // 512) > 1  # the flatbuffer, in MQTT chunks
        ctl.fleet.sync(client, quiet=0.3)
        state = ctl.fleet.get(DEVICE).state
        assert state["model"]["variant"] == "tflm" and state["model"]["sha256"] == v1.sha256
        kinds = [e.event for e in reversed(ctl.fleet.events(device=DEVICE, rollout=rid))]
        assert kinds[0] == "downloading" and "verified" in kinds and kinds[-1] == "activated"
        slots = [(fw.folder / "state" / f"slot-{i}.artifact") for i in (0, 1)]
        assert any(p.is_file() and p.read_bytes()[: len(data1)] == data1 for p in slots)

        # predictions: the tflite-micro interpreter's, class for class and score for score
        def serving(want) -> bool:
            answers = fw.predict(X.tolist())
            got = np.array([a["scores"] for a in answers], np.float32)
            classes = [a["class"] for a in answers]
            return classes == [int(c) for c in np.argmax(want, axis=1)] and bool(
                np.all(np.abs(got - want) <= 1e-6)
            )

        answers = fw.predict(X.tolist())
        assert [a["class"] for a in answers] == [int(c) for c in np.argmax(want1, axis=1)]
        scores = np.array([a["scores"] for a in answers], np.float32)
        assert np.max(np.abs(scores - want1)) <= 1e-6
        labels = v1.meta["labels"]
        assert [a["label"] for a in answers] == [labels[a["class"]] for a in answers]

        # telemetry: every full window stored by the real collector, none rejected, and the
        # first equal (but for latency) to WindowStats over the same rows and scores
        n_windows = len(X) // WINDOW
        store = MonitoringStore(ws.db, name)
        wait_until(
            lambda: len(store.windows("har@1", device=DEVICE)) >= n_windows,
            what="the firmware's windows in the collector's store",
        )
        # (the rollout controller records the device's events too: whichever of the two
        # stores an event first, the other counts it a duplicate)
        assert collecting.collector.accepted["telemetry"] == n_windows
        assert set(collecting.collector.rejected) <= {"duplicate"}, collecting.collector.rejected
        assert len(store.windows("har@1", device=DEVICE)) == n_windows
        watcher.pump(1.0)
        windows = sorted(
            (w for w in map(parse_telemetry, watcher.telemetry) if w["device"] == DEVICE),
            key=lambda w: w["seq"],
        )
        assert [w["seq"] for w in windows] == list(range(1, n_windows + 1))
        assert windows[0]["model"] == {
            "name": "har", "version": 1, "variant": "tflm", "sha256": v1.sha256,
        }  # fmt: skip
        python = WindowStats(v1.meta["baseline"])
        for x, s in zip(X[:WINDOW], want1[:WINDOW], strict=True):
            python.update(x, s, latency_ms=0.0)
        mine, ref = windows[0]["stats"], python.window()
        for field in ("count", "features", "feature_non_finite", "class_counts",
                      "confidence_counts", "errors", "non_finite_outputs"):  # fmt: skip
            assert mine[field] == ref[field], field

        # a corrupted chunk: v2's download fails, v1 keeps serving
        def envelope(seq):
            m = build_manifest(
                fleet=name, device=DEVICE, seq=seq, rollout=None,
                mv=ws.registry.get_version("har@2"), variant=v2, data=data2, hardware=["*"],
                opts=ManifestOptions(chunk_size=512),
            )  # fmt: skip
            return _signed(m, dk)

        seq = manifest["seq"] + 10
        _deploy(client, name, envelope(seq), data2, corrupt_chunk=1)
        failed = wait_until(lambda: watcher.event(DEVICE, "failed", seq), what="v2 failed")
        assert failed["step"] == "download", failed
        assert "SHA-256" in failed["reason"], failed
        assert not watcher.event(DEVICE, "activated", seq)
        assert serving(want1)

        # the same v2, whole: activated, and now it serves
        _deploy(client, name, envelope(seq + 1), data2)
        assert wait_until(lambda: watcher.event(DEVICE, "activated", seq + 1), what="v2 activated")
        assert serving(want2)
    finally:
        collecting.stop()
        watcher.close()
        client.close()
        fw.stop()
        ws.close()


# --- the tflm variant as a pipeline export ----------------------------------------------------


def test_pipeline_export_tflm_registers_the_int8_flatbuffer_with_its_arena(models):
    ws = Workspace.open(models)
    try:
        # the model har@1 was trained with (step cache): tflite-int8 comes from the cache,
        # tflm is converted again and must be the same bytes
        doc = {
            "name": "har-pipe",
            "data": "sensors@1",
            "label": "label",
            "features": "wrist@1",
            "model": {"kind": "keras_mlp", "params": {"hidden": [16], "epochs": 12}, "seed": 0},
            "export": ["tflite-int8", "tflm"],
        }
        result = run_pipeline(ws, parse_pipeline(doc, yaml.safe_dump(doc)))
        assert result.status == "registered"
        int8 = ws.registry.variant(result.model_ref, "tflite-int8")
        tflm, data = _flatbuffer(ws, result.model_ref)
        assert tflm.format == "tflite" and tflm.sha256 == int8.sha256 and data[4:8] == b"TFL3"
        assert tflm.meta["runtime"] == "tflm" and tflm.meta["quantization"] == "int8"
        arena = tflm.metrics["arena_bytes"]
        assert arena > 0 and tflm.metrics["model_bytes"] == len(data)
        # what add_tflm_variant measured for the same flatbuffer
        assert arena == ws.registry.variant("har@1", "tflm").metrics["arena_bytes"]
        inputs = np.asarray(tflm.meta["test_vectors"]["inputs"], np.float32)
        outputs = np.asarray(tflm.meta["test_vectors"]["outputs"], np.float32)
        assert np.array_equal(outputs, _reference(data, arena, inputs))
        mv = ws.registry.get_version(result.model_ref)
        assert choose_variant(mv, {"runtimes": ["tflite-micro"]}).name == "tflm"
    finally:
        ws.close()

    # a scikit-learn model cannot make tflite-int8: refused in one line, before training
    sk = {**doc, "model": {"kind": "random_forest"}, "export": ["tflm"]}
    with pytest.raises(InvalidInput, match="tflm is the tflite-int8 flatbuffer") as err:
        parse_pipeline(sk, yaml.safe_dump(sk))
    assert "\n" not in str(err.value) and "emlearn-loadable" in str(err.value)
