"""What the host-firmware tests share: a watcher of the fleet's messages, the real
collector on a thread, HMAC envelopes and deployments published by hand."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading

import pytest

from edgeops.firmware.build import has_libmosquitto
from edgeops.monitoring.collector import Collector, CollectorOptions
from edgeops.monitoring.ingest import Ingestor
from edgeops.mqtt import MqttClient
from edgeops_protocol.chunks import split_chunks
from edgeops_protocol.manifest import canonical_json
from edgeops_protocol.messages import parse_event, parse_state
from edgeops_protocol.topics import chunk_topic, device_filter, device_topic
from test_agent_kit import wait_until as _wait_until


def require_mosquitto_dev() -> None:
    if has_libmosquitto():
        return
    if os.environ.get("CI"):
        pytest.fail("libmosquitto-dev is required in CI (apt-get install libmosquitto-dev)")
    pytest.skip("libmosquitto-dev is not installed")


def wait_until(cond, timeout=60.0, what="condition"):
    return _wait_until(cond, timeout, what, every=0.1)


class Watcher:
    """Every state and event of a fleet, collected on a client of its own."""

    def __init__(self, url: str, fleet: str) -> None:
        self.client = MqttClient(url)
        self.client.subscribe(device_filter(fleet, "events"))
        self.client.subscribe(device_filter(fleet, "state"))
        self.client.subscribe(device_filter(fleet, "telemetry"))
        self.client.subscribe(device_filter(fleet, "samples"))
        self.client.subscribe(device_filter(fleet, "labels"))
        self.client.connect()
        self.events: list[dict] = []
        self.raw_events: list[dict] = []  # as sent: with the firmware's chunk counts
        self.states: dict[str, dict] = {}
        self.telemetry: list[bytes] = []
        self.samples: list[bytes] = []
        self.labels: list[bytes] = []

    def pump(self, seconds: float = 0.2) -> None:
        for msg in self.client.drain(seconds):
            kind = msg.topic.rsplit("/", 1)[1]
            if kind == "events":
                self.events.append(parse_event(msg.payload))
                self.raw_events.append(json.loads(msg.payload))
            elif kind == "state":
                st = parse_state(msg.payload)
                self.states[st["device"]] = st
            elif kind == "telemetry":
                self.telemetry.append(msg.payload)
            elif kind == "samples":
                self.samples.append(msg.payload)
            elif kind == "labels":
                self.labels.append(msg.payload)

    def event(self, device: str, kind: str, seq: int | None = None) -> dict | None:
        self.pump()
        for e in self.events:
            if e["device"] == device and e["event"] == kind and seq in (None, e["seq"]):
                return e
        return None

    def raw_event(self, device: str, kind: str, **fields) -> dict | None:
        """The first event of ``device`` of ``kind`` with these field values, as sent."""
        self.pump()
        for e in self.raw_events:
            if (
                e["device"] == device
                and e["event"] == kind
                and all(e.get(k) == v for k, v in fields.items())
            ):
                return e
        return None

    def close(self) -> None:
        self.client.close()


class Collecting:
    """The real collector on its own thread."""

    def __init__(self, ws, broker, fleet: str) -> None:
        opts = CollectorOptions(client_id=f"c-{fleet}", batch_size=50, linger=0.02)
        self.collector = Collector(Ingestor(ws.db, fleet), broker.url, opts).start()
        self.thread = threading.Thread(target=self.collector.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.collector.stop()
        self.thread.join(30)
        self.collector.close()


def sign_envelope(manifest: dict, key) -> dict:
    """The HMAC envelope, without the shape checks sign_manifest_hmac makes (so tests can
    sign malformed manifests)."""
    mac = hmac.new(key.key, canonical_json(manifest), hashlib.sha256).digest()
    return {
        "protocol": 1,
        "type": "desired",
        "manifest": manifest,
        "signature": {"alg": "hmac-sha256", "key_id": key.key_id,
                      "value": base64.b64encode(mac).decode()},
    }  # fmt: skip


def publish_deployment(client, fleet_name, envelope, data, corrupt_chunk=None):
    manifest = envelope["manifest"]
    chunks = split_chunks(data, manifest["artifact"]["chunk_size"])
    items = []
    for i, chunk in enumerate(chunks):
        payload = bytes([chunk[0] ^ 0xFF]) + chunk[1:] if i == corrupt_chunk else chunk
        items.append((chunk_topic(fleet_name, manifest["artifact"]["sha256"], i), payload, True))
    # out of order, and one chunk twice: the firmware must not care
    items = items[::-1] + items[:1]
    client.publish_all(items)
    topic = device_topic(fleet_name, manifest["device"], "desired")
    client.publish_all([(topic, json.dumps(envelope).encode(), True)])
