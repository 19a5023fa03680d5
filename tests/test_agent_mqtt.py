"""The device agent against a real Mosquitto: deployments, refusals, failures, rollbacks.

Each test has its own broker and fleet name; the server's side is played by
:class:`test_agent_kit.Server` with plain paho, so these tests pin the agent to
docs/protocol.md.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeops_agent.agent import Agent
from edgeops_protocol.chunks import describe_chunks, sha256_hex, split_chunks
from edgeops_protocol.manifest import generate_keypair
from edgeops_protocol.topics import chunk_topic, device_topic
from test_agent_kit import (
    Server,
    make_manifest,
    onnx_model,
    read_retained,
    wait_until,
)
from test_agent_kit import agents_fixture as agents_fixture
from test_agent_kit import keys_fixture as keys_fixture
from test_agent_kit import server_fixture as server_fixture
from test_agent_kit import start_fixture as start_fixture

DEV = "dev-1"


def _serving_seq(agent: Agent) -> int | None:
    model = agent.predictor.model
    return None if model is None else model.ref()["seq"]


def _deploy_v1(server: Server, agent: Agent, seq: int = 5) -> dict:
    manifest = server.deploy(onnx_model(0), DEV, seq)
    server.wait_event(DEV, "activated", seq)
    wait_until(lambda: _serving_seq(agent) == seq, what="v1 serving")
    return manifest


def test_agent_activates_a_signed_manifest(broker, server, start):
    agent = start()
    model = onnx_model(0)
    manifest = server.deploy(model, DEV, seq=5)
    server.wait_event(DEV, "activated", 5)

    events = server.events(DEV, 5)
    kinds = [e["event"] for e in events]
    progress = [e["progress"] for e in events if e["event"] == "downloading"]
    assert kinds == ["downloading"] * len(progress) + ["verified", "activated"]
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)
    assert len({int(p * 10) for p in progress}) == len(progress) <= 11  # at most every 10 %
    assert {e["deployment"] for e in events} == {f"r5/{DEV}"}

    state = wait_until(lambda: (s := server.last_state(DEV)) and s["model"] and s)
    assert state["online"] and state["accepted_seq"] == 5
    assert state["model"]["seq"] == 5
    assert state["model"]["sha256"] == manifest["artifact"]["sha256"]
    assert state["previous"] is None
    assert state["runtimes"] == ["onnxruntime"] and state["hardware"] == "test-hw"

    predictions = agent.predictor.predict_rows(model.rows)
    np.testing.assert_allclose([p["scores"] for p in predictions], model.probabilities, atol=1e-6)
    assert [p["label"] for p in predictions] == [
        ["no", "yes"][i] for i in model.probabilities.argmax(axis=1)
    ]
    by_features = agent.predictor.predict_features(model.matrix)
    assert [p["scores"] for p in by_features] == [p["scores"] for p in predictions]

    retained = read_retained(broker, device_topic(server.fleet, DEV, "state"))
    assert retained["model"]["seq"] == 5
    assert agent.stats["chunks_stored"] == len(manifest["artifact"]["chunks"])


def test_restarted_agent_keeps_its_model_and_ignores_the_same_seq(server, start, agents):
    agent = start()
    _deploy_v1(server, agent)
    events_before = len(server.events(DEV))
    agent.stop()
    agents.remove(agent)

    again = start()
    assert _serving_seq(again) == 5  # served from the slot before any message arrived
    wait_until(lambda: again.stats.get("desired_already_handled") == 1, what="desired ignored")
    again.wait_idle()
    assert len(server.events(DEV)) == events_before
    assert "chunks_stored" not in again.stats
    state = wait_until(lambda: (s := server.last_state(DEV)) and s.get("boot") == again.boot and s)
    assert state["model"]["seq"] == 5 and state["accepted_seq"] == 5


def _rejections(fleet: str, other_key: bytes) -> dict:
    m2 = onnx_model(1)
    now = time.time()
    big = bytes(range(256)) * 20  # 5120 bytes, over the 4096-byte limit of the agent below
    return {
        "bad signature": (
            lambda s: _tampered(s, make_manifest(m2, fleet=fleet, device=DEV, seq=6)),
            "bad signature",
        ),
        "unknown key": (
            lambda s: json.dumps(
                __import__("edgeops_protocol.manifest").manifest.sign_manifest(
                    make_manifest(m2, fleet=fleet, device=DEV, seq=6), other_key
                )
            ).encode(),
            "unknown signing key",
        ),
        "replay": (lambda s: make_manifest(m2, fleet=fleet, device=DEV, seq=3), "replayed"),
        "expired": (
            lambda s: make_manifest(
                m2, fleet=fleet, device=DEV, seq=6, issued_at=now - 100, expires_at=now - 1
            ),
            "expired",
        ),
        "wrong hardware": (
            lambda s: make_manifest(
                m2, fleet=fleet, device=DEV, seq=6, target={"hardware": ["rpi5"]}
            ),
            "targets hardware rpi5",
        ),
        "oversize": (
            lambda s: make_manifest(
                m2, fleet=fleet, device=DEV, seq=6, artifact=describe_chunks(big, 1024)
            ),
            "over this device's limit of 4096",
        ),
        "microcontroller format": (
            lambda s: make_manifest(
                m2,
                fleet=fleet,
                device=DEV,
                seq=6,
                target={"runtime": ["tflm"]},
                model={"format": "c-tflm", "runtime": "tflm", "variant": "c-tflm"},
            ),
            "needs runtime tflm",
        ),
    }


def _tampered(server: Server, manifest: dict) -> bytes:
    env = server.sign(manifest)
    env["manifest"]["model"]["version"] = 99  # changed after signing
    return json.dumps(env).encode()


@pytest.mark.parametrize(
    "case",
    [
        "bad signature",
        "unknown key",
        "replay",
        "expired",
        "wrong hardware",
        "oversize",
        "microcontroller format",
    ],
)
def test_refused_manifests_are_never_acted_on(case, server, start):
    agent = start(max_artifact_bytes=4096)
    _deploy_v1(server, agent)
    build, expected = _rejections(server.fleet, generate_keypair()[0])[case]
    desired = build(server)
    server.desire(DEV, desired)
    seq = 3 if case == "replay" else 6
    event = server.wait_event(DEV, "rejected", seq)
    assert expected in event["reason"]
    agent.wait_idle()
    assert agent.store.accepted_seq == 5
    assert _serving_seq(agent) == 5
    assert server.event_kinds(DEV, seq) == ["rejected"]
    assert agent.predictor.predict_rows(onnx_model(0).rows[:2])[0]["label"] in ("no", "yes")


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@pytest.mark.parametrize("case", ["flipped chunk", "artifact sha", "wrong outputs", "fail_health"])
def test_failed_deployments_keep_the_previous_model(case, server, start):
    agent = start(download_timeout_s=1.5, download_stall_s=0.5)
    _deploy_v1(server, agent)
    if case == "fail_health":  # v1 got in through a healthy agent; this one fails every check
        agent.stop()
        agent = start(simulate={"fail_health": True})
    agent.wait_idle()  # the activated event goes out before the last chunk is counted
    stored_before = agent.stats.get("chunks_stored", 0)
    m2 = onnx_model(1)
    manifest = make_manifest(m2, fleet=server.fleet, device=DEV, seq=6)
    chunks = split_chunks(m2.data, 64)
    sha = manifest["artifact"]["sha256"]
    if case == "artifact sha":  # every chunk matches its hash, the whole does not
        sha = sha256_hex(b"something else")
        manifest["artifact"]["sha256"] = sha
    if case == "flipped chunk":
        chunks[2] = _flip(chunks[2], 5)
    if case == "wrong outputs":
        manifest["health"]["outputs"] = (m2.probabilities[:4] + 0.5).tolist()
    for i, chunk in enumerate(chunks):
        server.publish(chunk_topic(server.fleet, sha, i), chunk)
    server.desire(DEV, manifest)

    event = server.wait_event(DEV, "failed", 6)
    step, reason = {
        "flipped chunk": ("download", "chunks 2 failed their SHA-256 check"),
        "artifact sha": ("verify", "artifact SHA-256 is"),
        "wrong outputs": ("health", "outputs differ from the expected"),
        "fail_health": ("health", "simulated failure"),
    }[case]
    assert reason in event["reason"] and event["step"] == step
    agent.wait_idle()
    assert "activated" not in server.event_kinds(DEV, 6)
    assert _serving_seq(agent) == 5 and agent.store.accepted_seq == 6
    assert agent.store.snapshot()["deploying"] is None
    assert not list((agent.config.state_dir / "downloads").iterdir())
    if case == "flipped chunk":
        assert agent.stats["chunks_bad"] >= 1
        stored = agent.stats["chunks_stored"] - stored_before
        assert stored == len(chunks) - 1  # the bad chunk was never written
    state = wait_until(lambda: (s := server.last_state(DEV)) and s["accepted_seq"] == 6 and s)
    assert state["model"]["seq"] == 5


def test_probation_rolls_back_a_model_that_predicts_nan(server, start, agents):
    agent = start()
    _deploy_v1(server, agent)
    agent.stop()
    agents.remove(agent)
    corrupt = start(simulate={"corrupt_outputs_after_activation": True})
    assert _serving_seq(corrupt) == 5
    server.deploy(onnx_model(1), DEV, seq=6)
    server.wait_event(DEV, "activated", 6)
    wait_until(lambda: _serving_seq(corrupt) == 6, what="v2 serving")
    assert corrupt.predictor._listeners == (corrupt._probation_listener,)  # on probation
    rows = onnx_model(1).rows
    for _ in range(25):
        out = corrupt.predictor.predict_rows(rows[:1])
        if out[0]["label"] is not None:  # rolled back already
            break
        assert out[0]["scores"] == [None, None]
    event = server.wait_event(DEV, "rolled_back", 6)
    assert event["reason"].startswith("probation: error rate 1.00 over 20 predictions")
    wait_until(lambda: _serving_seq(corrupt) == 5, what="v1 serving again")
    corrupt.wait_idle()
    assert corrupt.predictor._listeners == ()  # rolled back without a probation: off
    state = wait_until(lambda: (s := server.last_state(DEV)) and s["model"]["seq"] == 5 and s)
    assert state["previous"]["seq"] == 6
    good = corrupt.predictor.predict_rows(onnx_model(0).rows)
    np.testing.assert_allclose([p["scores"] for p in good], onnx_model(0).probabilities, atol=1e-6)


def test_probation_rolls_back_a_model_over_its_latency_budget(server, start):
    agent = start(simulate={"extra_latency_ms": 15})
    _deploy_v1(server, agent)
    server.deploy(onnx_model(1), DEV, seq=6, health={"latency_budget_ms": 10})
    server.wait_event(DEV, "activated", 6)  # the health check itself is fast
    wait_until(lambda: _serving_seq(agent) == 6, what="v2 serving")
    for _ in range(20):
        agent.predictor.predict_features(onnx_model(1).matrix[:1])
    event = server.wait_event(DEV, "rolled_back", 6)
    assert event["reason"].startswith("probation: median latency")
    assert event["reason"].endswith("is above the budget of 10 ms")
    wait_until(lambda: _serving_seq(agent) == 5, what="v1 serving again")


def test_a_manifest_whose_artifact_is_in_a_slot_skips_the_download(server, start):
    agent = start()
    v1 = _deploy_v1(server, agent)
    server.deploy(onnx_model(1), DEV, seq=6)
    server.wait_event(DEV, "activated", 6)
    agent.wait_idle()  # the event goes out before the last chunk is counted
    stored = agent.stats["chunks_stored"]
    back = make_manifest(onnx_model(0), fleet=server.fleet, device=DEV, seq=7)
    assert back["artifact"]["sha256"] == v1["artifact"]["sha256"]
    server.desire(DEV, back)
    server.wait_event(DEV, "activated", 7)
    assert server.event_kinds(DEV, 7) == ["verified", "activated"]
    assert agent.stats["chunks_stored"] == stored
    assert _serving_seq(agent) == 7 and agent.store.active == "a"


def test_an_offline_device_converges_when_it_starts(server, start):
    server.deploy(onnx_model(0), DEV, seq=9)  # retained before the device ever connected
    agent = start()
    server.wait_event(DEV, "activated", 9)
    wait_until(lambda: _serving_seq(agent) == 9, what="model serving")


def test_a_newer_manifest_wins_over_a_deployment_in_flight(server, start):
    agent = start()
    first = make_manifest(onnx_model(0), fleet=server.fleet, device=DEV, seq=5)
    server.publish_artifact(onnx_model(0).data, 64, skip=(3,))  # never completes
    server.desire(DEV, first)
    wait_until(lambda: agent.stats.get("chunks_stored", 0) >= 4, what="partial download")
    server.deploy(onnx_model(1), DEV, seq=6)
    server.wait_event(DEV, "activated", 6)
    failed = server.wait_event(DEV, "failed", 5)
    assert failed["reason"] == "superseded by manifest seq 6"
    assert "activated" not in server.event_kinds(DEV, 5)
    assert _serving_seq(agent) == 6


def _junk_topics(fleet: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            device_topic(fleet, DEV, "desired"),
            device_topic(fleet, "dev-2", "desired"),
            device_topic(fleet, "dev-2", "state"),
            f"edgeops/{fleet}/artifacts/{'ab' * 32}/0",
            f"edgeops/{fleet}/artifacts/not-a-sha/x",
            "edgeops/elsewhere/devices/x/desired",
            "random/topic",
        ]
    )


def test_junk_never_crashes_the_agent(broker, server, start):
    agent = start()
    v1 = _deploy_v1(server, agent)
    valid = json.dumps(
        server.sign(make_manifest(onnx_model(1), fleet=server.fleet, device=DEV, seq=6))
    ).encode()
    # through the broker: junk on its own desired topic (then cleared) and on another device's
    server.publish(device_topic(server.fleet, DEV, "desired"), b"\x00\xffnot json")
    server.publish(device_topic(server.fleet, "dev-2", "desired"), valid)
    wait_until(lambda: agent.stats.get("malformed", 0) >= 1, what="junk counted")
    server.desire(DEV, make_manifest(onnx_model(0), fleet=server.fleet, device=DEV, seq=5))
    wait_until(lambda: agent.stats.get("desired_already_handled"), what="valid desired again")
    assert agent.wait_idle()
    before = agent.stats
    sent = []

    mutated = st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255)).map(
        lambda p: valid[: p[0]] + bytes([valid[p[0]] ^ p[1]]) + valid[p[0] + 1 :]
    )
    payloads = st.one_of(
        st.binary(max_size=512),
        mutated,
        st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4).map(
            lambda d: json.dumps({"protocol": 1, "type": "desired", **d}).encode()
        ),
    )

    @settings(
        max_examples=100,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(topic=_junk_topics(server.fleet), payload=payloads)
    def feed(topic: str, payload: bytes) -> None:
        sent.append(agent.inject(topic, payload))
        if len(sent) % 16 == 0:
            agent.wait_idle()

    feed()
    assert agent.wait_idle()
    after = agent.stats
    grew = {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }
    assert grew["messages_received"] == len(sent) == 100
    junk = (
        "malformed",
        "rejected",
        "other_device",
        "unknown_topic",
        "chunks_unexpected",
        "desired_cleared",
        "desired_already_handled",
        "dropped_queue_full",
    )
    assert sum(grew.get(k, 0) for k in junk) == len(sent)
    assert grew.get("malformed", 0) > 0 and grew.get("other_device", 0) > 0
    assert _serving_seq(agent) == 5 and agent.store.accepted_seq == 5
    assert len(agent.predictor.predict_rows(onnx_model(0).rows)) == 8
    huge = b"x" * (agent.config.max_message_bytes + 1)
    assert agent.inject(device_topic(server.fleet, DEV, "desired"), huge) is False
    assert agent.stats["dropped_oversized"] == 1
    # and the worker still deploys
    server.deploy(onnx_model(1), DEV, seq=6)
    server.wait_event(DEV, "activated", 6)
    assert v1["seq"] == 5


def _http(address, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://{address[0]}:{address[1]}{path}", body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_local_http_endpoint_serves_predictions(server, start):
    agent = start(http_port=0)
    address = agent.http_address
    assert address[0] == "127.0.0.1"
    model = onnx_model(0)
    body = json.dumps({"rows": model.rows}).encode()
    assert _http(address, "POST", "/predict", body) == (
        503,
        {"error": "no model is active on this device yet"},
    )
    _deploy_v1(server, agent)
    status, out = _http(address, "POST", "/predict", body)
    assert status == 200 and out["model"]["seq"] == 5
    np.testing.assert_allclose(
        [p["scores"] for p in out["predictions"]], model.probabilities, atol=1e-6
    )
    status, out = _http(
        address, "POST", "/predict", json.dumps({"features": model.matrix.tolist()}).encode()
    )
    assert status == 200 and len(out["predictions"]) == 8
    for bad, message in [
        (b"{nope", "body is not valid JSON"),
        (b'{"rows": "x"}', "rows must be a non-empty list"),
        (b'{"rows": [{"f0": 1.0}]}', "missing column 'f1'"),
        (b'{"rows": [], "features": []}', 'body must be {"rows"'),
    ]:
        status, out = _http(address, "POST", "/predict", bad)
        assert status == 400 and message in out["error"] and "\n" not in out["error"]
    status, state = _http(address, "GET", "/state")
    assert status == 200 and state["model"]["seq"] == 5 and state["device"] == DEV
    assert _http(address, "GET", "/healthz")[1]["model"]["seq"] == 5
    assert _http(address, "GET", "/nope")[0] == 404
    assert _http(address, "POST", "/other", b"{}")[0] == 404


def test_the_agent_reconnects_after_a_broker_restart(broker, server, start):
    agent = start(reconnect_min_s=0.2, reconnect_max_s=1.0)
    _deploy_v1(server, agent)
    server.close()
    broker.restart()
    wait_until(lambda: agent.stats.get("connects") == 2, what="reconnected")
    again = Server(broker, server.fleet, server.private_key)
    try:
        state = wait_until(lambda: read_retained(broker, device_topic(server.fleet, DEV, "state")))
        assert state["online"] and state["model"]["seq"] == 5
        again.deploy(onnx_model(1), DEV, seq=6)
        again.wait_event(DEV, "activated", 6)
    finally:
        again.close()
