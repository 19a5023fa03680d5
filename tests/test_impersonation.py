"""The impersonation matrix (issue 8) on Mosquitto with the ACLs `edgeops broker config` writes.

Twenty provisioned devices each try to publish telemetry and state as every other
device (20 x 19 x 2 = 760 publishes) and to read every other device's retained
desired state (380 subscriptions). Mosquitto drops an unauthorized publish without
telling an MQTT 3.1.1 client (the PUBACK still comes; MQTT 5 gets a reason code),
so what counts is what a subscriber on the `server` account receives after a quiet
period. Each device's own publish and its own desired state are the positive controls.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgeops.localbroker import find_mosquitto, free_port, start_broker

N = 20


class Device:
    """One device's MQTT connection (TLS, its own password), recording what it gets back."""

    def __init__(self, name: str, password: str, port: int, ca: Path, *, v5: bool,
                 client_id: str | None = None) -> None:  # fmt: skip
        self.name = name
        self.v5 = v5
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or name,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        self.client.username_pw_set(name, password)
        self.client.tls_set(ca_certs=str(ca))
        self.connected = threading.Event()
        self.dropped = threading.Event()
        self.received: list[tuple[str, bytes, bool]] = []
        self.suback: list[int] = []
        self.puback: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.client.on_connect = lambda c, u, f, rc, p: rc.is_failure or self.connected.set()
        self.client.on_disconnect = lambda c, u, f, rc, p: self.dropped.set()
        self.client.on_message = self._message
        self.client.on_subscribe = self._subscribed
        self.client.on_publish = self._published
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, client, userdata, msg) -> None:
        with self._lock:
            self.received.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _subscribed(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._lock:
            self.suback.extend(rc.value for rc in reason_codes)

    def _published(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            self.puback[str(reason_code)] += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _payload(sender: str, kind: str) -> bytes:
    return json.dumps({"from": sender, "kind": kind}).encode()


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """20 provisioned devices, the generated broker config, Mosquitto running with it."""
    if find_mosquitto() is None:
        if os.environ.get("CI") or os.environ.get("EDGEOPS_REQUIRE_MOSQUITTO") == "1":
            pytest.fail("Mosquitto is required here (CI); apt-get install mosquitto")
        pytest.skip("Mosquitto is not installed")
    from edgeops import Workspace
    from edgeops.broker_config import BrokerOptions, write_broker_config
    from edgeops.config import tomllib
    from edgeops.fleet.keys import generate_key
    from edgeops.fleet.provision import provision_device

    ws, _ = Workspace.init(tmp_path / "ws", fleet="lab")
    ws.close()
    settings = ws.settings
    generate_key(settings.keys_dir)
    port, service_port = free_port(), free_port()
    names = [f"pi-{i:02d}" for i in range(N)]
    passwords = {}
    for name in names:
        done = provision_device(
            settings, name, out=tmp_path / "devices" / name, broker=f"mqtts://127.0.0.1:{port}"
        )
        passwords[name] = tomllib.loads(done.files["agent_config"].read_text())["password"]
    opts = BrokerOptions(
        listener=port,
        service_listener=service_port,
        self_signed=True,
        persistence_dir=f"{tmp_path / 'run'}/",
    )
    written = write_broker_config(settings, tmp_path / "conf", opts)
    broker = start_broker(tmp_path / "run", port=port, config_file=written.files["conf"])
    yield {
        "names": names,
        "passwords": passwords,
        "port": port,
        "ca": written.files["ca"],
        "server_url": written.urls["server"],
        "log": tmp_path / "run" / "mosquitto.log",
    }
    broker.stop()


def _wait(events, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    for e in events:
        assert e.wait(max(0.0, deadline - time.monotonic()))


def test_no_device_can_speak_for_or_read_as_another(fleet):
    from edgeops.mqtt import MqttClient

    names, port, ca = fleet["names"], fleet["port"], fleet["ca"]
    server = MqttClient(fleet["server_url"], client_id="test-server").connect()
    devices: list[Device] = []
    try:
        # every device has a retained desired state, as after a rollout
        server.publish_all(
            [(f"edgeops/lab/devices/{n}/desired", _payload("server", "desired"), True)
             for n in names]
        )  # fmt: skip
        for kind in ("telemetry", "state", "desired", "ack"):
            server.subscribe(f"edgeops/lab/devices/+/{kind}")
        server.wait_subscribed()
        time.sleep(0.3)
        while not server.messages.empty():  # the retained desired states just published
            server.messages.get()

        # even devices speak MQTT 3.1.1, odd ones MQTT 5 (which gets PUBACK reason codes)
        devices = [Device(n, fleet["passwords"][n], port, ca, v5=i % 2 == 1)
                   for i, n in enumerate(names)]  # fmt: skip
        _wait([d.connected for d in devices])
        infos = []
        for d in devices:
            for other in names:
                if other == d.name:
                    continue
                for kind in ("telemetry", "state"):
                    infos.append(d.client.publish(
                        f"edgeops/lab/devices/{other}/{kind}", _payload(d.name, kind),
                        qos=1, retain=kind == "state",
                    ))  # fmt: skip
            # a device may not write desired states either, not even its own
            infos.append(d.client.publish(
                f"edgeops/lab/devices/{d.name}/desired", _payload(d.name, "desired"), qos=1
            ))  # fmt: skip
            # nor the collector's acks (a forged ack would make a device drop its windows)
            infos.append(d.client.publish(
                f"edgeops/lab/devices/{d.name}/ack", _payload(d.name, "ack"), qos=1
            ))  # fmt: skip
            # positive control: its own telemetry
            infos.append(d.client.publish(
                f"edgeops/lab/devices/{d.name}/telemetry", _payload(d.name, "telemetry"), qos=1
            ))  # fmt: skip
            d.client.subscribe(
                [(f"edgeops/lab/devices/{o}/desired", 1) for o in names if o != d.name]
            )
            d.client.subscribe(f"edgeops/lab/devices/{d.name}/desired", 1)
        for info in infos:
            info.wait_for_publish(10)
        time.sleep(1.5)  # quiet period: whatever the broker forwards has arrived by now

        heard = [(m.topic, json.loads(m.payload)) for m in server.drain(0.5)]
        device_of = {m[0]: m[0].split("/")[3] for m in heard}
        impersonations = [t for t, p in heard if p["from"] != device_of[t]]
        desired_writes = [t for t, p in heard if t.endswith("/desired")]
        ack_writes = [t for t, p in heard if t.endswith("/ack")]
        own = [t for t, p in heard if p["from"] == device_of[t] and t.endswith("/telemetry")]
        retained_states = server.retained("edgeops/lab/devices/+/state")

        reads = sum(
            1 for d in devices for t, _, _ in d.received if t.split("/")[3] != d.name
        )  # fmt: skip
        own_desired = sum(
            1 for d in devices for t, p, r in d.received
            if t == f"edgeops/lab/devices/{d.name}/desired" and r
        )  # fmt: skip
        subacks = Counter(code for d in devices for code in d.suback[: N - 1])
        v5_pubacks = sum((d.puback for d in devices if d.v5), Counter())
    finally:
        for d in devices:
            d.close()
        server.close()

    attempts, subscriptions = N * (N - 1) * 2, N * (N - 1)
    print(
        f"\nimpersonation: {len(impersonations)} of {attempts} publishes accepted, "
        f"{reads} of {subscriptions} desired-state reads; "
        f"{len(desired_writes)} of {N} desired-state writes; {len(ack_writes)} of {N} ack writes; "
        f"own telemetry delivered {len(own)} of {N}, own desired state {own_desired} of {N}; "
        f"SUBACK codes of the refused reads {dict(subacks)}; "
        f"MQTT 5 PUBACK reasons {dict(v5_pubacks)}"
    )
    assert impersonations == []
    assert reads == 0
    assert desired_writes == []
    assert ack_writes == []
    assert retained_states == []
    assert sorted(own) == [f"edgeops/lab/devices/{n}/telemetry" for n in names]  # control
    assert own_desired == N  # control: each device reads its own retained desired state
    # Mosquitto 2.0 grants the SUBACK and filters on delivery; later versions may refuse
    # (0x80 with MQTT 3.1.1, 0x87 with MQTT 5). Either way nothing arrived (reads == 0).
    assert set(subacks) <= {1, 0x80, 0x87}
    assert sum(subacks.values()) == subscriptions
    # MQTT 5 devices are told: 10 devices x (38 refused + 1 desired write + 1 ack write)
    assert v5_pubacks["Not authorized"] == (N // 2) * (2 * (N - 1) + 2)
    assert v5_pubacks["Success"] == N // 2


def test_a_client_id_is_always_the_username(fleet):
    """Mosquitto does not refuse client ids with '/', '+' or '#': the device listener
    ignores them (use_username_as_clientid), so a device can neither pose as another
    device's client id nor use a wildcard in its own."""
    names, port, ca, pw = fleet["names"], fleet["port"], fleet["ca"], fleet["passwords"]
    victim = Device(names[1], pw[names[1]], port, ca, v5=False)
    first = Device(names[0], pw[names[0]], port, ca, v5=False)
    _wait([victim.connected, first.connected])
    takeovers = []
    try:
        # pi-00 presents pi-01's client id: pi-01 stays connected ...
        posing = Device(names[0], pw[names[0]], port, ca, v5=False, client_id=names[1])
        _wait([posing.connected])
        time.sleep(0.5)
        assert not victim.dropped.is_set()
        # ... because the broker called the new connection pi-00, which took over pi-00's
        assert first.dropped.is_set()
        takeovers.append(posing)
        # wildcards and separators in the client id are replaced the same way
        previous = posing
        for client_id in (f"{names[0]}/#", "#", "+", "a/b", f"{names[0]}/+"):
            d = Device(names[0], pw[names[0]], port, ca, v5=True, client_id=client_id)
            _wait([d.connected])
            assert previous.dropped.wait(5), client_id  # same client id: the older one goes
            takeovers.append(d)
            previous = d
        log = fleet["log"].read_text()
        for client_id in ("#", "+", "a/b", f"{names[0]}/#"):
            assert f" as {client_id} (" not in log
        assert log.count(f" as {names[0]} (") == 7
        assert not victim.dropped.is_set()
    finally:
        for d in (victim, first, *takeovers):
            d.close()
