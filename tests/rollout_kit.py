"""A fake MQTT transport for the rollout controller: what it publishes is recorded, what the
devices send is put on a queue by the test."""

from __future__ import annotations

import json
import queue

from edgeops.mqtt import Message
from edgeops_protocol.topics import device_topic


class FakeClient:
    """Records publishes and subscriptions; device messages are put on ``messages`` by the
    test. ``fleet`` is the fleet whose desired states :meth:`desired` reads."""

    def __init__(self, fleet: str = "lab") -> None:
        self.fleet = fleet
        self.published: list[tuple[str, bytes, bool]] = []
        self.messages: queue.Queue[Message] = queue.Queue()
        self.subscriptions: list[str] = []

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscriptions.append(topic)

    def publish_all(self, items, timeout: float = 60.0) -> None:
        self.published.extend(items)

    def drain(self, timeout: float):
        while True:
            try:
                yield self.messages.get_nowait()
            except queue.Empty:
                return

    def desired(self, device: str) -> dict:
        """The last desired state published for ``device``."""
        topic = device_topic(self.fleet, device, "desired")
        return json.loads([p for t, p, _ in self.published if t == topic][-1])
