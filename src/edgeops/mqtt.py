"""The server's MQTT adapter (paho-mqtt): connect, publish, subscribe, read retained state.

Speaks MQTT 3.1.1 so it works with any broker (Mosquitto, EMQX, HiveMQ, the
embedded amqtt); incoming messages are queued for one consumer thread so paho's
network thread never blocks.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .errors import BrokerUnavailable, ConfigError

__all__ = ["Message", "MqttClient", "parse_mqtt_url"]


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None, bool]:
    """``(host, port, username, password, tls)`` of ``mqtt://[user:pass@]host[:port]``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp") or not parts.hostname:
        raise ConfigError(f"bad MQTT URL {url!r}; use mqtt://host:port (or mqtts://)")
    tls = parts.scheme == "mqtts"
    port = parts.port or (8883 if tls else 1883)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, user, password, tls


class MqttClient:
    def __init__(self, url: str, client_id: str | None = None, max_queue: int = 100_000) -> None:
        import paho.mqtt.client as mqtt

        self.url = url
        host, port, user, password, tls = parse_mqtt_url(url)
        self._host, self._port = host, port
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgeops-server-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        if user:
            self.client.username_pw_set(user, password)
        if tls:
            self.client.tls_set()
        self.messages: queue.Queue[Message] = queue.Queue(maxsize=max_queue)
        self.dropped = 0
        self._connected = threading.Event()
        self._subscriptions: list[tuple[str, int]] = []
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self._connected.clear()

    # --- connection ---------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        for topic, qos in self._subscriptions:  # re-subscribe after a reconnect
            client.subscribe(topic, qos)
        self._connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            self.messages.put_nowait(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))
        except queue.Full:
            self.dropped += 1

    def connect(self, timeout: float = 10.0) -> MqttClient:
        try:
            self.client.connect(self._host, self._port, keepalive=30)
        except OSError as exc:
            raise BrokerUnavailable(
                f"cannot reach the MQTT broker at {self._host}:{self._port}: {exc}; "
                "start it or set EDGEOPS_MQTT_URL"
            ) from exc
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise BrokerUnavailable(
                f"the MQTT broker at {self._host}:{self._port} did not accept the connection "
                f"within {timeout:.0f}s; check its address and credentials"
            )
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> MqttClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- traffic -------------------------------------------------------------------
    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subscriptions.append((topic, qos))
        if self._connected.is_set():
            self.client.subscribe(topic, qos)

    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1):
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def publish_all(self, items: list[tuple[str, bytes, bool]], timeout: float = 60.0) -> None:
        """Publish and wait until the broker has acknowledged every message (QoS 1)."""
        infos = [self.publish(t, p, retain=r) for t, p, r in items]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise BrokerUnavailable("the MQTT broker did not acknowledge a publish in time")

    def drain(self, timeout: float) -> Iterator[Message]:
        """Messages arriving within ``timeout`` seconds (returns early on none for a while)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                yield self.messages.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue

    def retained(self, topic_filter: str, quiet: float = 0.3, limit: float = 5.0) -> list[Message]:
        """The retained messages under ``topic_filter``: subscribe, read until it goes quiet."""
        self.subscribe(topic_filter)
        got: list[Message] = []
        deadline = time.monotonic() + limit
        last = time.monotonic()
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=0.05)
            except queue.Empty:
                if time.monotonic() - last >= quiet:
                    break
                continue
            last = time.monotonic()
            if msg.retain:
                got.append(msg)
        self.client.unsubscribe(topic_filter)
        self._subscriptions = [s for s in self._subscriptions if s[0] != topic_filter]
        return got
