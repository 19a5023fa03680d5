"""The broker edgeops starts itself (the demo's fallback): Mosquitto, and amqtt where
Mosquitto is missing; each carries a retained state and a QoS 1 message end to end."""

from __future__ import annotations

import pytest

from edgeops.errors import BrokerUnavailable
from edgeops.localbroker import find_mosquitto, free_port, reachable, start_broker
from edgeops.mqtt import MqttClient


def _round_trip(url: str) -> list[tuple[str, bytes, bool]]:
    pub = MqttClient(url).connect()
    pub.publish("edgeops/t/devices/d1/state", b'{"online": true}', retain=True).wait_for_publish(5)
    pub.close()
    sub = MqttClient(url)
    sub.subscribe("edgeops/t/devices/+/state")
    sub.subscribe("edgeops/t/devices/+/telemetry")
    sub.connect()
    sub.wait_subscribed()
    pub = MqttClient(url).connect()
    pub.publish("edgeops/t/devices/d1/telemetry", b"w1").wait_for_publish(5)
    got = []
    for msg in sub.drain(3.0):
        got.append((msg.topic, msg.payload, msg.retain))
        if len(got) == 2:
            break
    pub.close()
    sub.close()
    return got


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_a_started_broker_carries_retained_and_qos1_messages(kind, tmp_path):
    if kind == "mosquitto" and find_mosquitto() is None:
        pytest.fail("Mosquitto is not installed; apt-get install mosquitto")
    broker = start_broker(tmp_path / kind, persistence=False, kind=kind)
    try:
        assert broker.kind == kind and reachable(broker.url)
        assert _round_trip(broker.url) == [
            ("edgeops/t/devices/d1/state", b'{"online": true}', True),
            ("edgeops/t/devices/d1/telemetry", b"w1", False),
        ]
    finally:
        broker.stop()
    assert not reachable(broker.url)


def test_nothing_listening_is_unreachable_and_a_dead_broker_says_so(tmp_path):
    assert not reachable(f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnavailable, match="exited"):
        start_broker(tmp_path, kind="mosquitto", extra_config="no_such_option 1")
