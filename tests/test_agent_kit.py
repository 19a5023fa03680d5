"""Helpers for the device agent's tests: small real models, signed manifests, a recorder.

The server's side of a deployment is played here by hand with paho, so these tests
pin the agent to docs/protocol.md rather than to the server's code. skl2onnx and
scikit-learn are imported here only (never by the agent).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeops_agent.agent import Agent
from edgeops_agent.config import AgentConfig
from edgeops_protocol.chunks import describe_chunks, split_chunks
from edgeops_protocol.features import fit
from edgeops_protocol.manifest import generate_keypair, sign_manifest
from edgeops_protocol.messages import parse_event, parse_state
from edgeops_protocol.topics import chunk_topic, device_topic

FEATURES = ["f0", "f1", "f2", "f3"]
SPEC = {
    "name": "demo",
    "inputs": [{"name": n, "kind": "numeric"} for n in FEATURES],
    "steps": [{"op": "select", "columns": FEATURES}, {"op": "scale", "method": "standard"}],
}


def wait_until(
    cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition", every: float = 0.02
) -> Any:
    """Poll ``cond`` every ``every`` seconds until it returns something truthy; fail after
    ``timeout`` seconds (every test module's waiting goes through here)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


@dataclass(frozen=True)
class Model:
    data: bytes  # ONNX bytes
    features: dict  # FittedFeatures.to_dict()
    rows: list  # raw sample dicts
    matrix: np.ndarray  # their features (float32)
    probabilities: np.ndarray  # onnxruntime's outputs on matrix


@functools.lru_cache(maxsize=4)
def onnx_model(seed: int = 0) -> Model:
    """A LogisticRegression on 4 standardized features, converted by skl2onnx (no ZipMap)."""
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    raw = rng.normal(loc=[1.0, -2.0, 0.5, 3.0], scale=[1.0, 2.0, 0.5, 1.5], size=(300, 4))
    columns = {n: raw[:, i] for i, n in enumerate(FEATURES)}
    fitted = fit(SPEC, columns)
    x = fitted.transform(columns)
    y = (x[:, 0] + x[:, 1] * (1 if seed % 2 == 0 else -1) > 0).astype(int)
    clf = LogisticRegression(C=1.0 + seed, random_state=seed).fit(x, y)
    onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    data = onx.SerializeToString()
    rows = [{n: float(raw[i, j]) for j, n in enumerate(FEATURES)} for i in range(8)]
    matrix = x[:8]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {session.get_inputs()[0].name: matrix})[0]
    return Model(data, fitted.to_dict(), rows, matrix, np.asarray(probs, np.float32))


def make_manifest(
    model: Model,
    /,
    *,
    fleet: str,
    device: str,
    seq: int,
    chunk_size: int = 64,
    version: int = 1,
    **over: Any,
) -> dict:
    now = time.time()
    m = {
        "fleet": fleet,
        "device": device,
        "seq": seq,
        "action": "deploy",
        "deployment": f"r{seq}/{device}",
        "rollout": f"r{seq}",
        "issued_at": now - 5,
        "expires_at": now + 3600,
        "target": {"hardware": ["test-hw"], "runtime": ["onnx"]},
        "model": {
            "name": "demo",
            "version": version,
            "variant": "onnx-f32",
            "format": "onnx",
            "runtime": "onnx",
        },
        "artifact": describe_chunks(model.data, chunk_size),
        "health": {
            "inputs": model.matrix[:4].tolist(),
            "outputs": model.probabilities[:4].tolist(),
            "atol": 1e-4,
            "latency_budget_ms": 1000,
            "probation_s": 60,
            "max_error_rate": 0.05,
        },
        "serving": {
            "labels": ["no", "yes"],
            "feature_names": FEATURES,
            "features": model.features,
            "baseline": None,
        },
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(m.get(key), dict):
            m[key] = {**m[key], **value}
        else:
            m[key] = value
    return m


def agent_config(state_dir: Path, broker: Any, fleet: str, public_key: bytes, **over: Any):
    simulate = over.pop("simulate", {})
    data = {
        "device": over.pop("device", "dev-1"),
        "fleet": fleet,
        "state_dir": str(state_dir),
        "broker": broker.url,
        "public_keys": [__import__("base64").b64encode(public_key).decode()],
        "hardware": "test-hw",
        "runtimes": ["onnxruntime"],
        "keepalive": 5,
        "download_stall_s": 1.0,
        "download_timeout_s": 30.0,
        "simulate": simulate,
        **over,
    }
    return AgentConfig.from_dict(data)


class Server:
    """The server's part, by hand: a paho client that publishes retained messages and
    records everything under ``edgeops/<fleet>/``."""

    def __init__(self, broker: Any, fleet: str, private_key: bytes | None = None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        if private_key is None:
            private_key, _ = generate_keypair()
        self.private_key = private_key
        self.fleet = fleet
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"server-{fleet}"[:60], protocol=mqtt.MQTTv311
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"edgeops/{fleet}/devices/#", 1)
        assert self._ready.wait(10), "server client did not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, retain: bool = True) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def publish_artifact(self, data: bytes, chunk_size: int = 64, skip: tuple = ()) -> str:
        sha = describe_chunks(data, chunk_size)["sha256"]
        for i, chunk in enumerate(split_chunks(data, chunk_size)):
            if i not in skip:
                self.publish(chunk_topic(self.fleet, sha, i), chunk)
        return sha

    def sign(self, manifest: dict) -> dict:
        return sign_manifest(manifest, self.private_key)

    def desire(self, device: str, manifest_or_payload: dict | bytes) -> None:
        payload = (
            manifest_or_payload
            if isinstance(manifest_or_payload, bytes)
            else json.dumps(self.sign(manifest_or_payload)).encode()
        )
        self.publish(device_topic(self.fleet, device, "desired"), payload)

    def deploy(self, model: Model, device: str, seq: int, **over: Any) -> dict:
        manifest = make_manifest(model, fleet=self.fleet, device=device, seq=seq, **over)
        self.publish_artifact(model.data, manifest["artifact"]["chunk_size"])
        self.desire(device, manifest)
        return manifest

    # --- what devices said ---------------------------------------------------------------
    def events(self, device: str, seq: int | None = None) -> list[dict]:
        topic = device_topic(self.fleet, device, "events")
        with self._lock:
            found = [parse_event(p) for t, p, _ in self.messages if t == topic]
        return [e for e in found if seq is None or e["seq"] == seq]

    def event_kinds(self, device: str, seq: int | None = None) -> list[str]:
        return [e["event"] for e in self.events(device, seq)]

    def wait_event(self, device: str, kind: str, seq: int | None = None, timeout=20.0) -> dict:
        return wait_until(
            lambda: next((e for e in self.events(device, seq) if e["event"] == kind), None),
            timeout,
            f"{kind} event from {device} (seq {seq}); saw {self.event_kinds(device)}",
        )

    def states(self, device: str) -> list[dict]:
        topic = device_topic(self.fleet, device, "state")
        with self._lock:
            return [parse_state(p) for t, p, _ in self.messages if t == topic]

    def last_state(self, device: str) -> dict | None:
        states = self.states(device)
        return states[-1] if states else None

    def retained_state(self, broker: Any, device: str) -> dict | None:
        """The retained state on the broker, read by a fresh subscriber."""
        return read_retained(broker, device_topic(self.fleet, device, "state"))


def read_retained(broker: Any, topic: str, timeout: float = 5.0) -> dict | None:
    """The retained state message on ``topic``, parsed; None when there is none."""
    payload = retained_payload(broker, topic, timeout)
    return parse_state(payload) if payload is not None else None


def retained_payload(broker: Any, topic: str, timeout: float = 5.0) -> bytes | None:
    """The retained message on ``topic`` as it is, read by a fresh subscriber; None if none."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[bytes] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)

    def on_message(c: Any, u: Any, msg: Any) -> None:
        if msg.retain:
            got.append(bytes(msg.payload))
            done.set()

    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.subscribe(topic, 1)
    client.loop_start()
    done.wait(timeout)
    client.disconnect()
    client.loop_stop()
    return got[-1] if got else None


# --- fixtures of the agent tests: a test module imports the ones it uses (``keys_fixture as
# keys_fixture``), which gives it the fixture by its name (``keys``) and no other module.


@pytest.fixture(name="keys")
def keys_fixture() -> tuple[bytes, bytes]:
    """A fresh signing key pair: (private, public)."""
    return generate_keypair()


@pytest.fixture(name="server")
def server_fixture(broker: Any, topic_prefix: str, keys: tuple[bytes, bytes]):
    """The server's side on this test's broker, fleet ``topic_prefix``, signing with ``keys``."""
    srv = Server(broker, topic_prefix, keys[0])
    yield srv
    srv.close()


@pytest.fixture(name="agents")
def agents_fixture():
    """Agents started by a test; stopped afterwards whatever happened."""
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


@pytest.fixture(name="start")
def start_fixture(broker: Any, server: Server, keys: tuple[bytes, bytes], tmp_path: Path, agents):
    """``start(state="state", **over)``: an agent on ``tmp_path / state``, started, connected."""

    def _start(state: str = "state", **over: Any) -> Agent:
        config = agent_config(tmp_path / state, broker, server.fleet, keys[1], **over)
        agent = Agent(config)
        agent.start()
        agents.append(agent)
        wait_until(lambda: agent.connected, what="agent connected")
        return agent

    return _start


def test_kit_model_is_deterministic():
    a = onnx_model(0)
    assert a.probabilities.shape == (8, 2)
    np.testing.assert_allclose(a.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert onnx_model(1).data != a.data
