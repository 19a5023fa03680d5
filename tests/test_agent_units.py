"""The agent's parts without a broker: config, store, chunks, deployment logic, health,
probation, predictor, worker pool; plus the docstring examples and the public names."""

from __future__ import annotations

import doctest
import hashlib
import importlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import edgeops_agent
from edgeops_agent.config import AgentConfig, SimulateConfig, load_config
from edgeops_agent.deploy import Deployment
from edgeops_agent.download import BAD, DUPLICATE, OUT_OF_RANGE, STORED, Download
from edgeops_agent.errors import ConfigError, DeployFailed, NoModel, PredictionError, StoreError
from edgeops_agent.health import health_check
from edgeops_agent.probation import Probation
from edgeops_agent.runtime import load_runner
from edgeops_agent.serve import LoadedModel, Predictor
from edgeops_agent.store import StateStore
from edgeops_agent.worker import Mailbox, WorkerPool
from edgeops_protocol.chunks import describe_chunks, split_chunks
from test_agent_kit import make_manifest, onnx_model

EXAMPLE = Path(__file__).resolve().parents[1] / "device_agent" / "agent.example.toml"
MODULES = [
    "config", "deploy", "download", "errors", "fsutil", "health", "local", "probation",
    "serve", "sim", "stats", "store", "worker", "agent", "mqtt", "httpd", "cli",
]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"edgeops_agent.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_public_names():
    assert sorted(edgeops_agent.__all__) == [
        "Agent",
        "AgentConfig",
        "AgentError",
        "Predictor",
        "SimulatedFleet",
        "__version__",
        "load_config",
    ]
    for name in edgeops_agent.__all__:
        assert getattr(edgeops_agent, name) is not None
    with pytest.raises(AttributeError):
        _ = edgeops_agent.Nope


# --- config ---------------------------------------------------------------------------


def test_the_example_config_loads():
    config = load_config(EXAMPLE)
    assert config.device == "pi-07" and config.fleet == "lab"
    assert config.broker == "mqtt://broker.local:1883" and config.mqtt_protocol == "3.1.1"
    assert config.state_dir == Path("/var/lib/edgeops-agent")
    assert config.http_port is None and config.simulate == SimulateConfig()
    assert len(config.public_keys) == 1 and len(next(iter(config.key_map))) == 16


def test_the_example_documents_every_key():
    import dataclasses

    text = EXAMPLE.read_text()
    names = [f.name for f in dataclasses.fields(AgentConfig) if f.name != "simulate"]
    names += ["password_file", "[simulate]", *(f.name for f in dataclasses.fields(SimulateConfig))]
    assert [n for n in names if n not in text] == []


def test_config_reads_keys_from_files_and_resolves_paths(tmp_path):
    raw = bytes(range(32))
    (tmp_path / "fleet.pub").write_text(__import__("base64").b64encode(raw).decode() + "\n")
    (tmp_path / "raw.pub").write_bytes(bytes(range(1, 33)))
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "agent.toml").write_text(
        'device = "pi"\nfleet = "lab"\nstate_dir = "st"\npassword_file = "pw"\n'
        'username = "pi"\npublic_keys = ["fleet.pub", "raw.pub"]\n'
        'tags = ["a", "b"]\nhttp_port = 0\n[hmac_keys]\nk1 = "AAEC"\n'
        "[simulate]\nextra_latency_ms = 5\n"
    )
    config = load_config(tmp_path / "agent.toml")
    assert config.public_keys == (raw, bytes(range(1, 33)))
    assert config.state_dir == tmp_path / "st" and config.password == "s3cret"
    assert config.hmac_keys == {"k1": b"\x00\x01\x02"} and config.tags == ("a", "b")
    assert config.simulate.extra_latency_ms == 5 and config.http_port == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"broker": "mqtt://h:99999"}, "broker 'mqtt://h:99999'"),
        ({"broker": "mqtt://u:p@h"}, "must not hold credentials"),
        ({"mqtt_protocol": "4"}, "mqtt_protocol must be"),
        ({"keepalive": 0}, "keepalive must be 1..65535"),
        ({"http_port": 70000}, "http_port must be 0..65535"),
        ({"download_stall_s": 20.0, "download_timeout_s": 10.0}, "download_stall_s must be"),
        ({"public_keys": (b"short",)}, "raw 32-byte"),
        ({"tags": ("",)}, "tags must be"),
    ],
)
def test_config_values_are_checked_when_built(tmp_path, change, message):
    base = {"device": "pi", "fleet": "lab", "state_dir": tmp_path, "public_keys": (bytes(32),)}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        AgentConfig(**{**base, **change})


def test_simulate_values_are_checked():
    with pytest.raises(ConfigError, match="download_delay_ms must be >= 0"):
        SimulateConfig(download_delay_ms=-1)


def test_runtimes_default_to_the_installed_ones(tmp_path):
    config = AgentConfig("pi", "lab", tmp_path, public_keys=(bytes(32),))
    assert "onnxruntime" in config.installed_runtimes
    assert config.replace(runtimes=("x",)).installed_runtimes == ("x",)


# --- store ----------------------------------------------------------------------------


def test_state_survives_a_new_store_and_leaves_no_temp_files(tmp_path):
    store = StateStore(tmp_path)
    assert store.snapshot()["accepted_seq"] == 0 and store.active is None
    assert store.new_boot() == 1
    store.begin_deployment(make_manifest(onnx_model(0), fleet="lab", device="pi", seq=4))
    again = StateStore(tmp_path)
    assert again.accepted_seq == 4 and again.state["boot"] == 1
    assert again.deploying_manifest()["seq"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    again.end_deployment(4)
    assert StateStore(tmp_path).deploying_manifest() is None
    assert not (tmp_path / "deploying.json").exists()


def test_a_damaged_state_file_is_an_error_not_a_reset(tmp_path):
    (tmp_path / "state.json").write_text("{half")
    with pytest.raises(StoreError, match="not valid JSON"):
        StateStore(tmp_path)
    (tmp_path / "state.json").write_text('{"format": 9}')
    with pytest.raises(StoreError, match="unknown format"):
        StateStore(tmp_path)


def _install(store: StateStore, slot: str, seed: int, seq: int) -> dict:
    model = onnx_model(seed)
    manifest = make_manifest(model, fleet="lab", device="pi", seq=seq)
    staged = store.staged_path(slot)
    staged.write_bytes(model.data)
    store.install(slot, manifest, staged)
    from edgeops_agent.deploy import slot_meta

    meta = slot_meta(manifest, 1000.0 + seq)
    store.activate(slot, meta)
    return manifest


def test_slots_switch_back_and_are_checked_against_their_hash(tmp_path):
    store = StateStore(tmp_path)
    _install(store, "a", 0, 5)
    _install(store, "b", 1, 6)
    assert (
        store.active == "b"
        and store.slot_with(describe_chunks(onnx_model(0).data)["sha256"]) == "a"
    )
    assert store.switch_back("bad") == ("b", "a")
    assert store.slot_meta("b")["rolled_back"] == "bad"
    data, manifest = store.read_slot("a")
    assert data == onnx_model(0).data and manifest["seq"] == 5
    store.model_path("a").write_bytes(b"tampered")
    with pytest.raises(StoreError, match="does not match its SHA-256"):
        store.read_slot("a")
    store.forget_slot("a")
    assert store.active is None and store.slot_meta("a") is None
    assert store.switch_back("again") == (None, None)


def test_another_process_change_is_noticed(tmp_path):
    store = StateStore(tmp_path)
    store.update(lambda s: s.update(accepted_seq=3))
    assert store.reload_if_changed() is False
    other = StateStore(tmp_path)
    time.sleep(0.01)  # a different mtime on file systems with coarse timestamps
    other.add_pending_event({"event": "rolled_back"})
    assert store.reload_if_changed() is True
    assert store.take_pending_events() == [{"event": "rolled_back"}]
    assert StateStore(tmp_path).state["pending_events"] == []


# --- chunks ---------------------------------------------------------------------------


def test_a_bad_chunk_is_never_written_and_a_download_resumes(tmp_path):
    data = bytes(range(200))
    artifact = describe_chunks(data, 64)
    chunks = split_chunks(data, 64)
    folder = tmp_path / "dl"
    dl = Download(artifact, folder)
    assert dl.resume() == 0
    assert dl.add(0, chunks[0]) == STORED
    assert dl.add(0, chunks[0]) == DUPLICATE
    assert dl.add(1, chunks[1][:-1] + b"\x00") == BAD
    assert dl.add(1, chunks[1] + b"x") == BAD  # over-long
    assert dl.add(9, chunks[1]) == OUT_OF_RANGE
    assert sorted(p.name for p in folder.iterdir()) == ["0.chunk"]
    assert dl.add(2, chunks[2]) == STORED
    (folder / "3.chunk").write_bytes(b"damaged by a power cut")
    (folder / ".1.chunk.x.tmp").write_bytes(chunks[1])
    again = Download(artifact, folder)
    assert again.resume() == 2 and again.missing() == [1, 3]
    assert sorted(p.name for p in folder.iterdir()) == ["0.chunk", "2.chunk"]
    again.add(1, chunks[1])
    again.add(3, chunks[3])
    assert again.complete and again.progress == 1.0
    again.assemble(tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes() == data


def test_assembly_checks_the_whole_artifact(tmp_path):
    data = bytes(range(100))
    artifact = {**describe_chunks(data, 50), "sha256": hashlib.sha256(b"other").hexdigest()}
    dl = Download(artifact, tmp_path / "dl")
    for i, chunk in enumerate(split_chunks(data, 50)):
        dl.add(i, chunk)
    with pytest.raises(DeployFailed, match="artifact SHA-256 is") as info:
        dl.assemble(tmp_path / "model.bin")
    assert info.value.step == "verify" and not (tmp_path / "model.bin").exists()


# --- deployment logic with fake ports ---------------------------------------------------


class FakePorts:
    def __init__(self, fail_health: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_health = fail_health

    def emit(self, event, manifest, *, progress=None, reason="", step=None):
        self.calls.append(("emit", event, progress, reason, step))

    def subscribe_chunks(self, sha256):
        self.calls.append(("subscribe",))

    def unsubscribe_chunks(self, sha256):
        self.calls.append(("unsubscribe",))

    def check_health(self, manifest, model_bytes):
        if self.fail_health:
            raise DeployFailed("health", self.fail_health)
        runner, _ = health_check("onnx", model_bytes, manifest["health"])
        return LoadedModel.build(runner, manifest)

    def activated(self, slot, model, meta):
        self.calls.append(("activated", slot, meta["seq"]))

    def events(self):
        return [c[1] for c in self.calls if c[0] == "emit"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _deployment(tmp_path, seq=5, seed=0, ports=None, clock=None, **kw):
    store = StateStore(tmp_path / "state")
    manifest = make_manifest(onnx_model(seed), fleet="lab", device="pi", seq=seq, **kw)
    store.begin_deployment(manifest)
    dep = Deployment(
        manifest, store, ports or FakePorts(), stall_s=2, timeout_s=5, clock=clock or Clock()
    )
    return dep, store, manifest


def test_a_deployment_downloads_verifies_checks_and_activates(tmp_path):
    dep, store, _ = _deployment(tmp_path)
    ports = dep.ports
    dep.begin()
    assert ports.calls[:2] == [("emit", "downloading", 0.0, "", None), ("subscribe",)]
    for i, chunk in enumerate(split_chunks(onnx_model(0).data, 64)):
        assert dep.add_chunk(i, chunk) == STORED
    assert dep.phase == "done" and store.active == "a"
    assert ports.events()[-1] == "verified"  # "activated" is the agent's, after the switch
    assert ports.calls[-1] == ("activated", "a", 5) and ("unsubscribe",) in ports.calls
    assert store.snapshot()["deploying"] is None
    assert store.read_slot("a")[0] == onnx_model(0).data
    assert not list((store.root / "downloads").iterdir())


def test_a_stalled_download_subscribes_again_then_fails(tmp_path):
    clock = Clock()
    dep, store, _ = _deployment(tmp_path, clock=clock)
    dep.begin()
    dep.add_chunk(0, split_chunks(onnx_model(0).data, 64)[0])
    clock.now = 1.0
    dep.tick()
    assert dep.ports.calls.count(("subscribe",)) == 1
    clock.now = 2.5
    dep.tick()
    assert dep.ports.calls.count(("subscribe",)) == 2
    clock.now = 5.0
    dep.tick()
    assert dep.phase == "failed" and store.active is None
    last = dep.ports.calls[-1]
    assert last[:2] == ("emit", "failed") and last[4] == "download"
    assert last[3].startswith("no new chunk for 5 s; missing chunks 1, 2, 3")


def test_a_failed_health_check_leaves_the_slots_alone(tmp_path):
    dep, store, _ = _deployment(tmp_path, ports=FakePorts(fail_health="outputs differ"))
    dep.begin()
    for i, chunk in enumerate(split_chunks(onnx_model(0).data, 64)):
        dep.add_chunk(i, chunk)
    assert dep.phase == "failed" and store.active is None and store.slot_meta("a") is None
    assert dep.ports.calls[-1] == ("emit", "failed", None, "outputs differ", "health")
    assert not store.staged_path("a").exists() and not store.model_path("a").exists()


def test_an_artifact_already_in_a_slot_is_not_downloaded(tmp_path):
    dep, store, _ = _deployment(tmp_path)
    dep.begin()
    for i, chunk in enumerate(split_chunks(onnx_model(0).data, 64)):
        dep.add_chunk(i, chunk)
    again = Deployment(
        make_manifest(onnx_model(0), fleet="lab", device="pi", seq=6), store, FakePorts()
    )
    again.begin()
    assert again.ports.events() == ["verified"] and store.active == "a"
    assert again.ports.calls[-1] == ("activated", "a", 6)
    assert store.slot_meta("a")["seq"] == 6


def test_an_abandoned_deployment_says_so(tmp_path):
    dep, _, _ = _deployment(tmp_path)
    dep.begin()
    dep.abandon("superseded by manifest seq 9")
    assert dep.phase == "abandoned"
    assert dep.ports.calls[-2:] == [
        ("unsubscribe",),
        ("emit", "failed", None, "superseded by manifest seq 9", "superseded"),
    ]
    assert dep.add_chunk(0, b"x") == "unexpected"


# --- health, probation, predictor --------------------------------------------------------


def test_health_check_failures_name_the_problem():
    model = onnx_model(0)
    health = make_manifest(model, fleet="lab", device="pi", seq=1)["health"]
    _, report = health_check("onnx", model.data, health)
    assert report.rows == 4 and report.max_abs_diff < 1e-5
    with pytest.raises(DeployFailed, match="format 'c-tflm' does not run"):
        health_check("c-tflm", model.data, health)
    with pytest.raises(DeployFailed, match="model does not load"):
        health_check("onnx", b"not a model", health)
    with pytest.raises(DeployFailed, match="the manifest expects"):
        health_check("onnx", model.data, {**health, "outputs": [[0.5]] * 4})
    ticks = iter(range(0, 10_000, 100))  # every call "takes" 100 ms
    with pytest.raises(DeployFailed, match=r"median latency 100000\.0 ms is over the budget"):
        health_check("onnx", model.data, health, clock=lambda: float(next(ticks)))
    with pytest.raises(DeployFailed, match="simulated failure"):
        health_check("onnx", model.data, health, simulate_failure=True)


def test_probation_judges_latency_and_ends_on_time():
    clock = Clock()
    p = Probation(10.0, max_error_rate=0.5, latency_budget_ms=5.0, clock=clock)
    assert [p.record(False, 9.0) for _ in range(19)] == [None] * 19
    assert p.record(False, 9.0) == (
        "median latency 9.0 ms over 20 predictions is above the budget of 5 ms"
    )
    q = Probation(10.0, max_error_rate=0.0, latency_budget_ms=0, clock=clock)
    clock.now = 10.0
    assert q.record(True, 1.0) is None and not q.active() and q.count == 0


def test_the_probation_listener_is_on_the_predictor_only_while_a_probation_runs(tmp_path):
    from edgeops_agent import Agent

    clock = Clock()
    agent = Agent(
        AgentConfig(device="pi", fleet="lab", state_dir=tmp_path, public_keys=(bytes(32),)),
        clock=clock,
    )
    predictor, _ = _predictor()
    agent.predictor.load(predictor.model)
    row = onnx_model(0).matrix[:1]
    assert agent.predictor._listeners == ()  # no probation: no listener, no Python call
    agent._probation = probation = Probation(10.0, max_error_rate=0.5, latency_budget_ms=0,
                                             clock=clock)  # fmt: skip
    agent._probation = probation  # set twice: still listed once
    assert agent.predictor._listeners == (agent._probation_listener,)
    for _ in range(3):
        agent.predictor.predict_features(row)
    assert probation.count == 3
    agent._probation = None
    agent.predictor.predict_features(row)
    assert probation.count == 3 and agent.predictor._listeners == ()


def _predictor(**kw) -> tuple[Predictor, LoadedModel]:
    model = onnx_model(0)
    manifest = make_manifest(model, fleet="lab", device="pi", seq=1)
    loaded = LoadedModel.build(load_runner("onnx", model.data), manifest, **kw)
    predictor = Predictor()
    predictor.load(loaded)
    return predictor, loaded


def test_predictor_matches_onnxruntime_and_tells_its_listeners():
    predictor, loaded = _predictor()
    seen = []
    predictor.add_listener(lambda x, out, ms, err: seen.append((x.tolist(), err)))
    model = onnx_model(0)
    out = predictor.predict_rows(model.rows)
    np.testing.assert_allclose([p["scores"] for p in out], model.probabilities, atol=1e-6)
    assert [x for x, _ in seen] == model.matrix.tolist() and not any(e for _, e in seen)
    assert loaded.ref()["seq"] == 1 and loaded.name == "demo:1/onnx-f32"
    with pytest.raises(PredictionError, match="missing column 'f3'"):
        predictor.predict_rows([{"f0": 1, "f1": 2, "f2": 3}])
    with pytest.raises(PredictionError, match="non-empty list"):
        predictor.predict_rows([])
    with pytest.raises(PredictionError, match="the model failed"):
        predictor.predict_features([[1.0, 2.0]])
    assert seen[-1][1] is True  # a model failure is counted as an error
    predictor.load(None)
    with pytest.raises(NoModel):
        predictor.predict_features([[0.0] * 4])


def test_corrupt_outputs_are_errors_without_labels():
    predictor, _ = _predictor(corrupt=True)
    errors = []
    predictor.add_listener(lambda x, out, ms, err: errors.append(err))
    assert predictor.predict_features([[0.0] * 4]) == [{"label": None, "scores": [None, None]}]
    assert errors == [True]


def test_a_bad_serving_section_fails_the_health_step():
    model = onnx_model(0)
    manifest = make_manifest(model, fleet="lab", device="pi", seq=1)
    manifest["serving"]["features"] = {"format": 1}
    with pytest.raises(DeployFailed, match=r"serving\.features"):
        LoadedModel.build(load_runner("onnx", model.data), manifest)


# --- worker pool ---------------------------------------------------------------------------


def test_a_mailbox_is_bounded_and_never_runs_concurrently_with_itself():
    pool = WorkerPool(threads=4)
    release = threading.Event()
    active, peak, seen = [0], [0], []
    lock = threading.Lock()

    def handler(item):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        release.wait(5)
        seen.append(item)
        with lock:
            active[0] -= 1

    box = Mailbox(pool, handler, max_items=8, max_bytes=100)
    accepted = [box.post(i) for i in range(12)]
    assert accepted == [True] * 8 + [False] * 4
    assert box.post("big", size=101) is False and box.post("ctl", force=True) is True
    pool.start()
    release.set()
    assert box.wait_idle(10)
    pool.stop()
    assert seen == [*range(8), "ctl"] and peak[0] == 1


def test_timers_fire_in_order_and_can_be_cancelled():
    pool = WorkerPool(threads=1)
    pool.start()
    fired = []
    done = threading.Event()
    pool.call_later(0.05, lambda: fired.append("b"))
    pool.call_later(0.0, lambda: fired.append("a"))
    pool.call_later(0.02, lambda: fired.append("never")).cancel()
    pool.call_later(0.1, done.set)
    assert done.wait(10)
    pool.stop()
    assert fired == ["a", "b"]


def test_state_json_is_readable_json(tmp_path):
    store = StateStore(tmp_path)
    store.update(lambda s: s.update(accepted_seq=2))
    assert json.loads((tmp_path / "state.json").read_text())["accepted_seq"] == 2
