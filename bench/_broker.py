"""A Mosquitto of the benchmark's own on a free loopback port (the test suite's settings,
tests/brokers.py), shared by the benchmarks that need a broker."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Broker", "start_broker"]


@dataclass
class Broker:
    url: str
    host: str
    port: int
    proc: subprocess.Popen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_broker(folder: Path, extra: str = "") -> Broker:
    """Start Mosquitto with per-client limits that hold for any fleet size; ``extra`` lines
    are appended to its configuration."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        raise SystemExit("mosquitto is not installed; apt-get install mosquitto")
    folder.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "log_dest stderr\nlog_type error\nmax_queued_messages 100000\n"
        "max_inflight_messages 100\nmessage_size_limit 10485760\nset_tcp_nodelay true\n" + extra
    )
    log = open(folder / "mosquitto.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}; see {folder}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return Broker(f"mqtt://127.0.0.1:{port}", "127.0.0.1", port, proc)
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("mosquitto did not listen within 15 s") from None
            time.sleep(0.05)
