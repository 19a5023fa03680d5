"""The rollout controller (adapter) with a fake MQTT transport: what it publishes, what it
records, how it resumes. The real broker and agents are in test_rollout_e2e.py."""

from __future__ import annotations

import json

import pytest

from edgeops.fleet.controller import RolloutController, RolloutOptions
from edgeops.fleet.keys import generate_key
from edgeops.fleet.store import FleetStore
from edgeops.mqtt import Message
from edgeops.registry import NewVariant
from edgeops_protocol.manifest import DeviceFacts, check_manifest, key_id, verify_envelope
from edgeops_protocol.messages import event_message, state_message
from edgeops_protocol.topics import device_topic
from rollout_kit import FakeClient


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def _version(ws, name, version_variants):
    """Register a model with tflite and onnx variants (bytes are opaque to the controller)."""
    from sklearn.linear_model import LogisticRegression

    from edgeops.model_io import save_sklearn

    blob = save_sklearn(LogisticRegression().fit([[0.0], [1.0]], [0, 1]))
    meta = {
        "labels": ["a", "b"],
        "test_vectors": {"inputs": [[0.0]], "outputs": [[0.5, 0.5]]},
        "quantization": "int8",
    }
    variants = [
        NewVariant(
            n, f"{name}-{n}-{version_variants}".encode() * 50, fmt, {"latency_ms_p95": 0.01}, meta
        )
        for n, fmt in (("tflite-int8", "tflite"), ("onnx-f32", "onnx"))
    ]
    return ws.registry.register(name, blob, "skops", variants=variants)


@pytest.fixture
def setup(ws, monkeypatch):
    monkeypatch.setenv("EDGEOPS_FLEET", "lab")
    from edgeops import Workspace

    w = Workspace.open(ws.settings.home)
    v1 = _version(w, "m", 1)
    _version(w, "m", 2)
    fleet = FleetStore(w.db, "lab")
    for i in range(10):
        rt = ["onnxruntime"] if i == 9 else ["ai-edge-litert"]
        model = (
            None
            if i == 8
            else {
                "name": "m",
                "version": 1,
                "variant": "tflite-int8",
                "sha256": v1.variants[1].sha256,
                "seq": 1,
            }
        )
        fleet.apply_state(
            json.loads(
                state_message(
                    fleet="lab",
                    device=f"d{i}",
                    online=True,
                    boot="b",
                    ts=0.0,
                    hardware="rpi4",
                    runtimes=rt,
                    accepted_seq=1,
                    model=model,
                    previous=None,
                    tags=["lab"] if i < 9 else ["lab", "edge"],
                )
            )
        )
    key = generate_key(w.settings.keys_dir)
    client, clock = FakeClient(), Clock()
    yield w, key, client, clock
    w.close()


def _report(client, device, seq, event, reason=""):
    client.messages.put(
        Message(
            device_topic("lab", device, "events"),
            event_message(
                fleet="lab",
                device=device,
                boot="b",
                ts=0.0,
                seq=seq,
                deployment="x",
                rollout=client.rid,
                event=event,
                reason=reason,
            ),
            False,
        )
    )


def _deployed(client, since=0):
    out = {}
    for topic, payload, _ in client.published[since:]:
        if topic.endswith("/desired"):
            m = json.loads(payload)["manifest"]
            out[m["device"]] = m
    return out


def test_staged_rollout_publishes_signed_manifests_and_completes(setup):
    ws, key, client, clock = setup
    ctl = RolloutController(ws, key, client, clock=clock)
    rid = ctl.create("m@2", "tag:lab", RolloutOptions(stages=(0.1, 0.5, 1.0), timeout=60))
    client.rid = rid
    ctl.run(max_seconds=0)
    first = _deployed(client)
    assert list(first) == ["d0"]  # 10% of 10 devices, in id order
    m = first["d0"]
    assert (m["model"]["variant"], m["model"]["version"], m["seq"]) == ("tflite-int8", 2, 2)
    env = client.desired("d0")
    verified = verify_envelope(env, {key_id(key.public): key.public})
    assert check_manifest(
        verified, DeviceFacts("lab", "d0", "rpi4", ("ai-edge-litert",)), accepted_seq=1, now=clock.t
    )
    chunk_topics = [t for t, _, retain in client.published if "/artifacts/" in t and retain]
    assert chunk_topics  # the artifact was published retained before the manifest

    _report(client, "d0", 2, "activated")
    ctl.run(max_seconds=0)
    assert set(_deployed(client)) == {"d0", "d1", "d2", "d3", "d4"}
    for d in ("d1", "d2", "d3", "d4"):
        _report(client, d, _deployed(client)[d]["seq"], "activated")
    ctl.run(max_seconds=0)
    manifests = _deployed(client)
    assert manifests["d9"]["model"]["variant"] == "onnx-f32"  # its runtime is onnxruntime
    for d in ("d5", "d6", "d7", "d8", "d9"):
        _report(client, d, manifests[d]["seq"], "activated")
    ctl.run(max_seconds=0)
    st = ctl.status(rid)
    assert st["status"] == "completed"
    assert st["counts"]["activated"] == 10
    seqs = sorted(m["seq"] for m in manifests.values())
    assert seqs == list(range(2, 12))  # fleet-wide, never reused
    events = FleetStore(ws.db, "lab").events(rollout=rid)
    assert len(events) == 10


def test_failures_abort_and_revert_to_each_devices_previous_model(setup):
    ws, key, client, clock = setup
    ctl = RolloutController(ws, key, client, clock=clock)
    rid = ctl.create(
        "m@2", "tag:lab", RolloutOptions(stages=(0.5, 1.0), max_failures=0.2, timeout=60)
    )
    client.rid = rid
    ctl.run(max_seconds=0)
    stage = _deployed(client)
    assert set(stage) == {"d0", "d1", "d2", "d3", "d4"}
    _report(client, "d0", stage["d0"]["seq"], "activated")
    _report(client, "d1", stage["d1"]["seq"], "activated")
    for d in ("d2", "d3"):
        _report(client, d, stage[d]["seq"], "failed", "health check: outputs differ")
    mark = len(client.published)
    ctl.run(max_seconds=0)
    st = ctl.status(rid)
    assert st["status"] == "aborting"
    reverts = _deployed(client, since=mark)
    # activated and still-deploying devices go back to m@1; failed ones never left it
    assert set(reverts) == {"d0", "d1", "d4"}
    assert all(m["model"]["version"] == 1 for m in reverts.values())
    assert all(m["seq"] > stage[d]["seq"] for d, m in reverts.items())
    for d, m in reverts.items():
        _report(client, d, m["seq"], "activated")
    ctl.run(max_seconds=0)
    assert ctl.status(rid)["status"] == "aborted"
    assert ctl.status(rid)["devices_detail"]["d2"]["reason"] == "health check: outputs differ"


def test_a_new_controller_resumes_after_the_lease_lapses(setup):
    ws, key, client, clock = setup
    first = RolloutController(ws, key, client, clock=clock)
    rid = first.create("m@2", "device:d0,d1", RolloutOptions(stages=(0.5, 1.0), timeout=60))
    client.rid = rid
    first.run(max_seconds=0)
    assert set(_deployed(client)) == {"d0"}
    # the first controller dies; a second one may not take over while the lease holds
    second = RolloutController(ws, key, client, clock=clock)
    _report(client, "d0", _deployed(client)["d0"]["seq"], "activated")
    second.run(max_seconds=0)
    assert set(_deployed(client)) == {"d0"}
    assert second.status(rid)["counts"]["deploying"] == 1
    clock.t += 16  # past the lease
    _report(client, "d0", _deployed(client)["d0"]["seq"], "activated")
    second.run(max_seconds=0)
    assert set(_deployed(client)) == {"d0", "d1"}
    _report(client, "d1", _deployed(client)["d1"]["seq"], "activated")
    second.run(max_seconds=0)
    assert second.status(rid)["status"] == "completed"


def test_timeouts_retry_with_a_new_manifest_then_count_as_failures(setup):
    ws, key, client, clock = setup
    ctl = RolloutController(ws, key, client, clock=clock)
    rid = ctl.create(
        "m@2", "device:d0", RolloutOptions(stages=(1.0,), timeout=30, retries=1, max_failures=1.0)
    )
    client.rid = rid
    ctl.run(max_seconds=0)
    first = _deployed(client)["d0"]["seq"]
    clock.t += 31
    ctl.run(max_seconds=0)
    second = _deployed(client)["d0"]["seq"]
    assert second > first
    clock.t += 31
    ctl.run(max_seconds=0)
    st = ctl.status(rid)
    assert st["devices_detail"]["d0"]["status"] == "timed_out"
    assert st["status"] == "completed"  # within max_failures=100%


def test_operator_requests_and_resign(setup):
    ws, key, client, clock = setup
    ctl = RolloutController(ws, key, client, clock=clock)
    rid = ctl.create("m@2", "device:d0,d1", RolloutOptions(stages=(0.5, 1.0), timeout=60))
    client.rid = rid
    ctl.run(max_seconds=0)
    ctl.request(rid, "pause")
    _report(client, "d0", _deployed(client)["d0"]["seq"], "activated")
    ctl.run(max_seconds=0)
    assert ctl.status(rid)["status"] == "paused"
    assert set(_deployed(client)) == {"d0"}
    ctl.request(rid, "resume")
    ctl.run(max_seconds=0)
    assert set(_deployed(client)) == {"d0", "d1"}

    before = client.desired("d0")["manifest"]
    clock.t += 5 * 24 * 3600  # past half of the week a manifest lives
    assert ctl.resign_expiring(clock.t) == 2
    after = client.desired("d0")
    assert after["manifest"]["seq"] == before["seq"]
    assert after["manifest"]["expires_at"] == clock.t + 7 * 24 * 3600
    verify_envelope(after, {key_id(key.public): key.public})
    from edgeops.errors import Conflict, InvalidInput

    with pytest.raises(InvalidInput, match="no device in fleet lab matches"):
        ctl.create("m@2", "tag:nothing", RolloutOptions())
    _report(client, "d1", _deployed(client)["d1"]["seq"], "activated")
    ctl.run(max_seconds=0)
    assert ctl.status(rid)["status"] == "completed"
    with pytest.raises(Conflict, match="is completed; nothing to pause"):
        ctl.request(rid, "pause")


def test_sequence_numbers_stay_above_what_devices_accepted(setup):
    ws = setup[0]
    fleet = FleetStore(ws.db, "lab")
    first = fleet.next_seq()
    # a device reports it accepted seq 50 (e.g. the server was restored from an old backup)
    fleet.apply_state(
        json.loads(
            state_message(
                fleet="lab",
                device="d0",
                online=True,
                boot="b",
                ts=0.0,
                hardware="rpi4",
                runtimes=["ai-edge-litert"],
                accepted_seq=50,
                model=None,
                previous=None,
                tags=[],
            )
        )
    )
    assert first == 2
    assert fleet.next_seq() == 51
