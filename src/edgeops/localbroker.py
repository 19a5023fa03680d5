"""A local MQTT broker on a free loopback port, started by edgeops itself: for the demo
when no broker is configured, and for the tests and benchmarks.

Mosquitto (its own config, persistence in its folder) where it is installed; else
amqtt, the pure-Python MQTT 3.1.1 broker (``pip install amqtt``), in a child
process. :func:`reachable` tells whether a configured broker answers.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import BrokerUnavailable

__all__ = ["LocalBroker", "find_mosquitto", "free_port", "reachable", "start_broker"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(url: str, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections where the MQTT ``url`` points."""
    parts = urlsplit(url)
    port = parts.port or (8883 if parts.scheme in ("mqtts", "ssl") else 1883)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerUnavailable(f"the local MQTT broker exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise BrokerUnavailable(f"the local MQTT broker did not listen on port {port} in {timeout}s")


@dataclass
class LocalBroker:
    host: str
    port: int
    kind: str  # "mosquitto" or "amqtt"
    proc: subprocess.Popen
    folder: Path
    config_file: Path | None = None  # a whole Mosquitto config of the caller's

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port (persistence kept for Mosquitto)."""
        self.stop()
        new = start_broker(
            self.folder, self.port, True, kind=self.kind, config_file=self.config_file
        )
        self.proc = new.proc


def _mosquitto_config(folder: Path, port: int, persistence: bool, extra: str) -> Path:
    conf = folder / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        # as root, Mosquitto drops to the mosquitto user and could not write persistence here
        *(["user root"] if os.geteuid() == 0 and "user " not in extra else []),
        "allow_anonymous true",
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {folder}/",
        "set_tcp_nodelay true",
        "log_dest stderr",
        "log_type error",
        "max_queued_messages 100000",
        "max_inflight_messages 100",
        "message_size_limit 10485760",
        extra,
    ]
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _own_config(folder: Path, config_file: Path) -> Path:
    """A copy of a caller's Mosquitto config; as root, with ``user root`` as above (the
    broker would read its password and ACL files as the mosquitto user)."""
    text = Path(config_file).read_text()
    if os.geteuid() == 0 and not any(ln.startswith("user ") for ln in text.splitlines()):
        text = "user root\n" + text
    conf = folder / "mosquitto-own.conf"
    conf.write_text(text)
    return conf


_AMQTT = (
    "import asyncio\n"
    "from amqtt.broker import Broker\n"
    "cfg={{'listeners':{{'default':{{'type':'tcp','bind':'127.0.0.1:{port}'}}}},"
    "'sys_interval':0,'auth':{{'allow-anonymous':True}},'topic-check':{{'enabled':False}}}}\n"
    "async def main():\n"
    "    b=Broker(cfg); await b.start(); await asyncio.Event().wait()\n"
    "asyncio.run(main())\n"
)


def start_broker(
    folder: Path,
    port: int | None = None,
    persistence: bool = True,
    extra_config: str = "",
    kind: str | None = None,
    config_file: Path | None = None,
) -> LocalBroker:
    """Start a broker in ``folder`` (``kind``: "mosquitto", "amqtt", or None for the first
    that is installed).

    ``config_file``: run Mosquitto with this config instead of the generated one (e.g.
    the one ``edgeops broker config`` writes); ``port`` must be one of its listeners.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if config_file is not None and (port is None or kind == "amqtt"):
        raise BrokerUnavailable("a config_file needs Mosquitto and the port it listens on")
    port = port or free_port()
    mosquitto = find_mosquitto() if kind in (None, "mosquitto") else None
    if mosquitto:
        if config_file is not None:
            conf = _own_config(folder, config_file)
        else:
            conf = _mosquitto_config(folder, port, persistence, extra_config)
        log = open(folder / "mosquitto.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=log, stderr=log)
        _wait_listening(port, proc)
        return LocalBroker("127.0.0.1", port, "mosquitto", proc, folder, config_file)
    if kind == "mosquitto" or config_file is not None:
        raise BrokerUnavailable("Mosquitto is not installed; apt-get install mosquitto")
    try:
        import amqtt  # noqa: F401 - only to say clearly that it is missing
    except ModuleNotFoundError:
        raise BrokerUnavailable(
            "no MQTT broker to start: install Mosquitto (apt-get install mosquitto) "
            "or amqtt (pip install amqtt), or configure one with --mqtt-url"
        ) from None
    log = open(folder / "amqtt.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-c", _AMQTT.format(port=port)], stdout=log, stderr=log
    )
    _wait_listening(port, proc)
    return LocalBroker("127.0.0.1", port, "amqtt", proc, folder)
