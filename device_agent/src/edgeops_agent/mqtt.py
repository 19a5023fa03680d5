"""The agent's one MQTT connection (paho-mqtt 2, callback API version 2).

MQTT 3.1.1 by default (``mqtt_protocol = "5"`` for MQTT 5), client id = device
id, a retained last will that marks the device offline, and reconnects with
exponential backoff (``reconnect_min_s`` .. ``reconnect_max_s``) done by paho's
network thread, which also retries the first connection.

``mqtts://``: TLS (1.2 or newer) checking the broker's certificate against
``ca_file`` (else the system's CAs) and its host name; with ``cert_file`` and
``key_file`` the agent also presents a client certificate, for brokers that
require one (``edgeops broker config --client-certs``). A failed connection
attempt (refused TCP, a TLS handshake the agent rejects) is logged with its
reason once until the next successful connection; paho's own errors (a broker
that rejects the agent's certificate: with TLS 1.3 that arrives after the
handshake, as an alert on the first read) go to ``edgeops_agent.mqtt.paho``,
warnings and errors only.

Clean session: **yes**. Everything a device must receive is retained (the
desired manifest, the artifact chunks), so after every (re)connect the agent
subscribes again and the broker hands it the current values; a persistent session
would add nothing but a queue of stale chunks on the broker for every offline
device, and chunks for a download the device may have abandoned meanwhile.

Callbacks run on paho's thread and only hand over to the agent: they must not
block. Publishing is thread-safe in paho.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import sys
from collections.abc import Callable
from typing import Any

from .config import AgentConfig, parse_broker_url

__all__ = ["MqttLink"]

log = logging.getLogger("edgeops_agent.mqtt")
paho_log = logging.getLogger("edgeops_agent.mqtt.paho")
paho_log.setLevel(logging.WARNING)  # paho logs every packet at debug level


def no_delay(client: Any) -> None:
    """Send small MQTT packets at once. Without TCP_NODELAY, delayed ACKs stall each
    publish/acknowledge round trip by about 40 ms (measured in bench/fleet.py)."""
    import contextlib
    import socket

    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):  # not TCP (e.g. a unix socket)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tls_context(config: AgentConfig) -> ssl.SSLContext:
    """The TLS client context of an ``mqtts://`` broker: ``ca_file`` (or the system's CAs),
    and the client certificate when ``cert_file`` and ``key_file`` are set."""
    from .errors import ConfigError

    try:
        ctx = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"ca_file {config.ca_file} is not a readable PEM file ({exc})") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.cert_file is not None and config.key_file is not None:
        try:
            ctx.load_cert_chain(str(config.cert_file), str(config.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot use cert_file {config.cert_file} with key_file {config.key_file}: {exc}"
            ) from exc
    return ctx


class MqttLink:
    """Connect, publish, subscribe; incoming messages go to ``on_message(topic, payload)``."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        will: tuple[str, bytes],
        on_message: Callable[[str, bytes], object],
        on_connect: Callable[[], object],
        on_disconnect: Callable[[], object],
    ) -> None:
        try:
            import paho.mqtt.client as mqtt
            from paho.mqtt.enums import CallbackAPIVersion
        except ImportError as exc:  # pragma: no cover - a dependency of edgeops-agent
            from .errors import ConfigError

            raise ConfigError(
                "paho-mqtt is not installed; reinstall the agent: pip install ./device_agent"
            ) from exc
        self._mqtt = mqtt
        self.host, self.port, tls = parse_broker_url(config.broker)
        v5 = config.mqtt_protocol == "5"
        kwargs: dict[str, Any] = {"client_id": config.device}
        if v5:
            kwargs["protocol"] = mqtt.MQTTv5
        else:
            kwargs.update(protocol=mqtt.MQTTv311, clean_session=True)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        self.client.enable_logger(paho_log)
        self._v5 = v5
        self.keepalive = config.keepalive
        self.client.reconnect_delay_set(
            min_delay=max(1, int(config.reconnect_min_s)), max_delay=int(config.reconnect_max_s)
        )
        self.client.max_inflight_messages_set(32)
        self.client.max_queued_messages_set(1000)
        if config.username:
            self.client.username_pw_set(config.username, config.password)
        if tls:
            self.client.tls_set_context(tls_context(config))
        topic, payload = will
        self.client.will_set(topic, payload, qos=1, retain=True)
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self.client.on_connect = self._connected
        self.client.on_connect_fail = self._connect_failed
        self._failing = False
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self._started = False

    @property
    def connected(self) -> bool:
        return bool(self.client.is_connected())

    def start(self) -> None:
        """Connect in the background; paho retries until the broker answers."""
        if self._started:
            return
        self._started = True
        if self._v5:
            self.client.connect_async(
                self.host, self.port, keepalive=self.keepalive, clean_start=True
            )
        else:
            self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()

    def stop(self, final: tuple[str, bytes] | None = None) -> None:
        """Publish ``final`` (the offline state) if connected, disconnect, stop the thread."""
        if not self._started:
            return
        self._started = False
        if final is not None and self.connected:
            info = self.client.publish(final[0], final[1], qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # the connection just dropped
                info.wait_for_publish(timeout=2.0)
        self.client.disconnect()
        self.client.loop_stop()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a crash would (the broker sends the will)."""
        if not self._started:
            return
        self._started = False
        self.client.on_disconnect = None
        self.client.on_message = None
        self.client.loop_stop()  # the network thread ends; the socket stays open ...
        sock = self.client.socket()
        if sock is not None:  # ... until it is closed here, with no DISCONNECT packet
            with contextlib.suppress(OSError):
                sock.close()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> bool:
        """Queue a publish; False when not connected (nothing is sent)."""
        if not self.connected:
            return False
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc == self._mqtt.MQTT_ERR_SUCCESS

    def subscribe(self, topic_filter: str, qos: int = 1) -> bool:
        rc, _ = self.client.subscribe(topic_filter, qos)
        return rc == self._mqtt.MQTT_ERR_SUCCESS

    def unsubscribe(self, topic_filter: str) -> None:
        self.client.unsubscribe(topic_filter)

    # --- paho callbacks (paho's network thread) ----------------------------------------
    def _connected(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("broker %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        no_delay(client)
        self._failing = False
        self._on_connect()

    def _connect_failed(self, client: Any, userdata: Any) -> None:
        # paho calls this inside its `except OSError:` (connection refused, TLS handshake)
        exc = sys.exc_info()[1]
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(level, "cannot connect to broker %s:%d: %s; retrying", self.host, self.port, exc)

    def _disconnected(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._on_disconnect()

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._on_message(msg.topic, msg.payload)
