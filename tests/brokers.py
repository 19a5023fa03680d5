"""A real MQTT broker for tests: Mosquitto on a free port with its own config
(:mod:`edgeops.localbroker`).

Where Mosquitto is not installed the broker falls back to amqtt (a pure-Python
MQTT 3.1.1 broker) and says so — except in CI (``CI`` set) or with
``EDGEOPS_REQUIRE_MOSQUITTO=1``, where a missing Mosquitto fails the test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from edgeops.localbroker import LocalBroker as Broker
from edgeops.localbroker import find_mosquitto, free_port
from edgeops.localbroker import start_broker as _start

__all__ = ["Broker", "free_port", "start_broker"]


def start_broker(
    folder: Path, port: int | None = None, persistence: bool = True, extra_config: str = ""
) -> Broker:
    if find_mosquitto() is None:
        if os.environ.get("CI") or os.environ.get("EDGEOPS_REQUIRE_MOSQUITTO") == "1":
            pytest.fail(
                "Mosquitto is required here (CI) but is not installed; apt-get install mosquitto"
            )
        print("mosquitto not installed: falling back to the amqtt broker", file=sys.stderr)
    return _start(folder, port=port, persistence=persistence, extra_config=extra_config)
