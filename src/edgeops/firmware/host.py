"""The host firmware as a process: its config file, predictions over stdin, a clean stop.

:class:`HostFirmware` runs the binary :func:`edgeops.firmware.build.build_host`
made, with a config written from :class:`HostConfig`, and talks to it the way
the port serves predictions: one JSON feature row per line in, one JSON answer
per line out. The tests use it; so can ``edgeops firmware test``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["HostConfig", "HostFirmware"]

BATCH = 64  # rows written before their answers are read (keeps both pipes from filling)


@dataclass(frozen=True)
class HostConfig:
    device: str
    fleet: str
    broker: str  # mqtt://host:port
    hmac_key_id: str
    hmac_key_b64: str
    hardware: str = "host-sim"
    state_dir: str = "state"
    tags: tuple[str, ...] = ()
    window_count: int = 0
    window_s: float = 60.0
    download_stall_s: float = 10.0
    download_timeout_s: float = 300.0
    keepalive: int = 30
    flash_bytes: int = 0  # declared in the state when > 0 (a rollout checks the footprint)
    ram_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        values: dict[str, Any] = {
            "device": self.device,
            "fleet": self.fleet,
            "broker": self.broker,
            "hardware": self.hardware,
            "state_dir": self.state_dir,
            "hmac_key_id": self.hmac_key_id,
            "hmac_key": self.hmac_key_b64,
            "tags": list(self.tags),
            "window_count": self.window_count,
            "window_s": self.window_s,
            "download_stall_s": self.download_stall_s,
            "download_timeout_s": self.download_timeout_s,
            "keepalive": self.keepalive,
            **{
                k: v
                for k, v in (("flash_bytes", self.flash_bytes), ("ram_bytes", self.ram_bytes))
                if v > 0
            },
            **self.extra,
        }
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


class HostFirmware:
    """One running ``edgeops-firmware`` process in ``folder`` (config, state, log)."""

    def __init__(self, binary: Path, folder: Path, config: HostConfig) -> None:
        self.binary = Path(binary)
        self.folder = Path(folder)
        self.config = config
        self.proc: subprocess.Popen[str] | None = None

    @property
    def log_path(self) -> Path:
        return self.folder / "firmware.log"

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def start(self) -> HostFirmware:
        self.folder.mkdir(parents=True, exist_ok=True)
        cfg = self.folder / "device.toml"
        cfg.write_text(self.config.text())
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process writes it until it ends
        try:
            self.proc = subprocess.Popen(
                [str(self.binary), "--config", str(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
                # a TFLM build runs TFLite Micro in `python -m edgeops.firmware.tflm_worker`
                env={"EDGEOPS_TFLM_PYTHON": sys.executable, **os.environ},
            )
        finally:
            log.close()
        return self

    def predict(self, rows: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
        """One answer per row: ``{"class", "label", "scores", "latency_ms"}`` or ``{"error"}``."""
        proc = self._running()
        assert proc.stdin is not None and proc.stdout is not None
        answers: list[dict[str, Any]] = []
        for i in range(0, len(rows), BATCH):
            batch = rows[i : i + BATCH]
            proc.stdin.write("".join(json.dumps([float(v) for v in r]) + "\n" for r in batch))
            proc.stdin.flush()
            for _ in batch:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"the firmware stopped; its log:\n{self.log()[-2000:]}")
                answers.append(json.loads(line))
        return answers

    def label(self, sample_id: str, label: str) -> dict[str, Any]:
        """Ground truth for a sampled prediction (its answer's ``sample_id``), which the
        firmware publishes on its ``labels`` topic: ``{"ok": true}`` or ``{"error": ...}``."""
        proc = self._running()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"sample_id": sample_id, "label": label}) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the firmware stopped; its log:\n{self.log()[-2000:]}")
        return json.loads(line)

    def _running(self) -> subprocess.Popen[str]:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"the firmware is not running; its log:\n{self.log()[-2000:]}")
        return self.proc

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM: the firmware sends its open window and offline state, then exits."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL, as a power cut: the broker publishes the last will."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
