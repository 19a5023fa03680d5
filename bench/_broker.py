"""A Mosquitto of the benchmark's own on a free loopback port (edgeops.localbroker, the
test suite's settings, without persistence), shared by the benchmarks that need a broker."""

from __future__ import annotations

from pathlib import Path

from edgeops.localbroker import LocalBroker as Broker
from edgeops.localbroker import find_mosquitto
from edgeops.localbroker import start_broker as _start

__all__ = ["Broker", "start_broker"]


def start_broker(folder: Path, extra: str = "") -> Broker:
    """Start Mosquitto; ``extra`` lines are appended to its configuration."""
    if find_mosquitto() is None:
        raise SystemExit("mosquitto is not installed; apt-get install mosquitto")
    return _start(folder, persistence=False, extra_config=extra, kind="mosquitto")
