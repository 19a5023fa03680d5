"""The server's MQTT adapter (paho-mqtt): connect, publish, subscribe, read retained state.

Speaks MQTT 3.1.1 by default so it works with any broker (Mosquitto, EMQX, HiveMQ,
the embedded amqtt); ``protocol="5"`` speaks MQTT 5 (shared subscriptions, a
session expiry, a receive maximum). Incoming messages are queued for one
consumer thread so paho's network thread never blocks for long.

With ``manual_ack=True`` a QoS 1 message is acknowledged only when the consumer
calls :meth:`MqttClient.ack`, e.g. after it committed the message to the
database; with a persistent session (``session_expiry > 0`` and a fixed
``client_id``) the broker redelivers every unacknowledged message when the same
client id connects again, so a consumer that crashes loses nothing. An ack is
only sent on the connection the message arrived on: after a reconnect the broker
redelivers it anyway, and a stale packet id could acknowledge a newer message.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import BrokerUnavailable, ConfigError

__all__ = ["PROTOCOLS", "Message", "MqttClient", "parse_mqtt_url"]

PROTOCOLS = ("3.1.1", "5")


def no_delay(client: Any) -> None:
    """Send small MQTT packets at once. Without TCP_NODELAY, delayed ACKs stall each
    publish/acknowledge round trip by about 40 ms (measured in bench/fleet.py)."""
    import contextlib
    import socket

    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):  # not TCP (e.g. a unix socket)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    mid: int = 0  # packet id, for manual acks
    qos: int = 0
    conn: int = 0  # the connection (counted from 1) it arrived on


class MessageQueue(queue.Queue):
    """A FIFO of :class:`Message` bounded in messages *and* in payload bytes: ``put``
    waits while either bound would be passed (a message bigger than ``max_bytes`` on its
    own still goes in when the queue is empty, so nothing is stuck forever). The bytes
    held are ``self.bytes``; the most ever held, ``self.peak_bytes``."""

    def __init__(self, maxsize: int = 0, max_bytes: int = 0) -> None:
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        self.bytes = 0
        self.peak_bytes = 0

    def _room_for(self, size: int) -> bool:
        if 0 < self.maxsize <= self._qsize():
            return False
        return not (self.max_bytes and self.bytes and self.bytes + size > self.max_bytes)

    def put(self, item: Message, block: bool = True, timeout: float | None = None) -> None:
        size = len(item.payload)
        with self.not_full:
            if not self._room_for(size):
                if not block:
                    raise queue.Full
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._room_for(size):
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise queue.Full
                    self.not_full.wait(left)
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def _put(self, item: Message) -> None:
        self.queue.append(item)
        self.bytes += len(item.payload)
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def _get(self) -> Message:
        item = self.queue.popleft()
        self.bytes -= len(item.payload)
        self.not_full.notify_all()  # a waiting put may now fit (get() notifies only one)
        return item


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None, bool]:
    """``(host, port, username, password, tls)`` of ``mqtt://[user:pass@]host[:port]``.

    ``mqtts://`` checks the broker's certificate against the system's CAs, or against
    the PEM file of ``mqtts://host:port?ca_file=/path/ca.pem``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp") or not parts.hostname:
        raise ConfigError(f"bad MQTT URL {url!r}; use mqtt://host:port (or mqtts://)")
    tls = parts.scheme == "mqtts"
    port = parts.port or (8883 if tls else 1883)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, user, password, tls


class MqttClient:
    def __init__(
        self,
        url: str,
        client_id: str | None = None,
        max_queue: int = 100_000,
        *,
        max_queue_bytes: int = 0,
        protocol: str = "3.1.1",
        manual_ack: bool = False,
        session_expiry: int = 0,
        receive_maximum: int | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt

        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown MQTT protocol {protocol!r}; use 3.1.1 or 5")
        self.url = url
        host, port, user, password, tls = parse_mqtt_url(url)
        self._host, self._port = host, port
        self.protocol = protocol
        self.manual_ack = manual_ack
        v5 = protocol == "5"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgeops-server-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else session_expiry <= 0,
            manual_ack=manual_ack,
        )
        self._connect_kw: dict = {}
        if v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            if session_expiry > 0:
                props.SessionExpiryInterval = int(session_expiry)
            if receive_maximum:
                props.ReceiveMaximum = int(receive_maximum)
            self._connect_kw = {"clean_start": session_expiry <= 0, "properties": props}
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        if user:
            self.client.username_pw_set(user, password)
        if tls:  # system CAs, or the one named by ?ca_file=PATH (e.g. the fleet CA)
            self.client.tls_set(ca_certs=parse_qs(urlsplit(url).query).get("ca_file", [None])[0])
        self.messages: MessageQueue = MessageQueue(max_queue, max_queue_bytes)
        self.dropped = 0
        self.connections = 0  # connections made so far; Message.conn refers to these
        self.session_present = False
        self._connected = threading.Event()
        self._ack_lock = threading.Lock()
        self._subscriptions: list[tuple[str, int]] = []
        self._suback = threading.Condition()
        self._sub_sent: set[int] = set()
        self._sub_acked: set[int] = set()
        self._sub_refused: list[str] = []
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    # --- connection ---------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        no_delay(client)
        with self._ack_lock:
            self.connections += 1
        self.session_present = bool(getattr(flags, "session_present", False))
        for topic, qos in self._subscriptions:  # re-subscribe after a reconnect
            self._send_subscribe(topic, qos)
        self._connected.set()

    def _send_subscribe(self, topic: str, qos: int) -> None:
        _, mid = self.client.subscribe(topic, qos)
        if mid is not None:
            with self._suback:
                self._sub_sent.add(mid)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._suback:
            self._sub_acked.add(mid)
            for rc in reason_codes:
                if rc.is_failure:
                    self._sub_refused.append(str(rc))
            self._suback.notify_all()

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Block until the broker acknowledged every subscription sent so far."""
        with self._suback:
            done = self._suback.wait_for(lambda: self._sub_sent <= self._sub_acked, timeout)
            refused = list(self._sub_refused)
        if refused:
            raise BrokerUnavailable(
                f"the MQTT broker at {self._host}:{self._port} refused a subscription "
                f"({refused[0]}); check its ACLs, or use MQTT 3.1.1 if it lacks shared "
                "subscriptions"
            )
        if not done:
            raise BrokerUnavailable(
                f"the MQTT broker at {self._host}:{self._port} did not acknowledge a "
                f"subscription within {timeout:.0f}s"
            )

    def _on_disconnect(self, *args: object) -> None:
        with self._ack_lock:  # no ack may go out between the old and the new connection
            self._connected.clear()

    def _on_message(self, client, userdata, msg) -> None:
        m = Message(
            msg.topic, bytes(msg.payload), bool(msg.retain), msg.mid, msg.qos, self.connections
        )
        try:
            if self.manual_ack:
                # Wait rather than drop: an unacknowledged message would only come back
                # on the next connection. Blocking here holds back the socket (backpressure).
                self.messages.put(m, timeout=10.0)
            else:
                self.messages.put_nowait(m)
        except queue.Full:
            self.dropped += 1

    def connect(self, timeout: float = 10.0) -> MqttClient:
        try:
            self.client.connect(self._host, self._port, keepalive=30, **self._connect_kw)
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
            self._send_subscribe(topic, qos)

    def ack(self, msg: Message) -> bool:
        """Acknowledge a message received with ``manual_ack``; False if it came on an earlier
        connection (the broker redelivers those) or needs no ack."""
        if not self.manual_ack or msg.qos == 0:
            return False
        with self._ack_lock:
            if msg.conn != self.connections or not self._connected.is_set():
                return False
            self.client.ack(msg.mid, msg.qos)
        return True

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
