"""The broker the harness starts: Mosquitto listening on 127.0.0.1, on the host side of
every simulated device's link, and on ``broker.listen`` for real devices."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from hil.errors import HilError

__all__ = ["connections", "listen_addresses", "mosquitto_config", "start"]


def listen_addresses(addresses: list[str]) -> list[str]:
    """127.0.0.1 and ``addresses``, once each; ``0.0.0.0`` alone when it is asked for (it
    covers the others, and Mosquitto could not bind both)."""
    wanted = ["127.0.0.1", *addresses]
    return ["0.0.0.0"] if "0.0.0.0" in wanted else list(dict.fromkeys(wanted))


def mosquitto_config(port: int, addresses: list[str]) -> str:
    """A Mosquitto 2 config: anonymous, no persistence, one listener per address."""
    lines = [f"listener {port} {a}" for a in listen_addresses(addresses)]
    lines += [
        "allow_anonymous true",
        "persistence false",
        "set_tcp_nodelay true",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",  # connections and keepalive timeouts: connections() counts them
        "max_queued_messages 100000",
        "max_inflight_messages 100",
        "message_size_limit 10485760",
    ]
    return "\n".join(lines) + "\n"


def start(folder: Path, port: int, addresses: list[str]) -> Any:
    """Start Mosquitto (:class:`edgeops.localbroker.LocalBroker`); it must be installed."""
    from edgeops.errors import BrokerUnavailable
    from edgeops.localbroker import find_mosquitto, free_port, start_broker

    if find_mosquitto() is None:
        raise HilError("the harness's broker is Mosquitto: apt-get install mosquitto")
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "hil-mosquitto.conf"
    conf.write_text(mosquitto_config(port, addresses))
    try:
        return start_broker(folder, port, config_file=conf)
    except BrokerUnavailable as exc:
        log = (folder / "mosquitto.log").read_text(errors="replace")[-400:]
        raise HilError(f"Mosquitto did not start: {exc}; {log.strip()}") from exc


def connections(folder: Path) -> Counter[str]:
    """How many times each client id connected, from the started broker's log."""
    try:
        text = (folder / "mosquitto.log").read_text(errors="replace")
    except OSError:
        return Counter()
    return Counter(re.findall(r"New client connected from \S+ as (\S+)", text))
