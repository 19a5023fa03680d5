"""A real MQTT broker for tests: Mosquitto on a free port with its own config.

Where Mosquitto is not installed the broker falls back to amqtt (a pure-Python
MQTT 3.1.1 broker) and says so — except in CI (``CI`` set) or with
``EDGEOPS_REQUIRE_MOSQUITTO=1``, where a missing Mosquitto fails the test.
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

import pytest

__all__ = ["Broker", "free_port", "start_broker"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"broker did not listen on port {port} within {timeout}s")


@dataclass
class Broker:
    host: str
    port: int
    kind: str  # "mosquitto" or "amqtt"
    proc: subprocess.Popen
    folder: Path

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
        new = start_broker(self.folder, port=self.port, persistence=True)
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


def start_broker(
    folder: Path, port: int | None = None, persistence: bool = True, extra_config: str = ""
) -> Broker:
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    mosquitto = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if mosquitto:
        conf = _mosquitto_config(folder, port, persistence, extra_config)
        log = open(folder / "mosquitto.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=log, stderr=log)
        _wait_listening(port, proc)
        return Broker("127.0.0.1", port, "mosquitto", proc, folder)
    if os.environ.get("CI") or os.environ.get("EDGEOPS_REQUIRE_MOSQUITTO") == "1":
        pytest.fail(
            "Mosquitto is required here (CI) but is not installed; apt-get install mosquitto"
        )
    print("mosquitto not installed: falling back to the embedded amqtt broker", file=sys.stderr)
    code = (
        "import asyncio, sys\n"
        "from amqtt.broker import Broker\n"
        f"cfg={{'listeners':{{'default':{{'type':'tcp','bind':'127.0.0.1:{port}'}}}},"
        "'sys_interval':0,'auth':{'allow-anonymous':True},'topic-check':{'enabled':False}}\n"
        "async def main():\n"
        "    b=Broker(cfg); await b.start(); await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    _wait_listening(port, proc)
    return Broker("127.0.0.1", port, "amqtt", proc, folder)
