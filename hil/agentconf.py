"""The agent configuration the harness writes on every target (TOML, the keys of
``device_agent/agent.example.toml``)."""

from __future__ import annotations

import base64
import json
from typing import Any

__all__ = ["agent_toml"]


def agent_toml(
    *,
    device: str,
    fleet: str,
    broker: str,
    public_key: bytes,
    hardware: str,
    runtimes: tuple[str, ...],
    tags: tuple[str, ...],
    http_port: int,
    window: int,
    keepalive: int,
) -> str:
    """The agent's config. Telemetry windows close on count only (``telemetry_window_s =
    0``), so ``N`` predictions make exactly ``N / window`` windows: what the telemetry
    scenario expects. ``state_dir`` is relative: next to the config file."""
    values: dict[str, Any] = {
        "device": device,
        "fleet": fleet,
        "hardware": hardware,
        "tags": list(tags),
        "broker": broker,
        "keepalive": keepalive,
        "reconnect_min_s": 1.0,
        "reconnect_max_s": 5.0,
        "public_keys": [base64.b64encode(public_key).decode()],
        "state_dir": "state",
        "download_stall_s": 3.0,
        "runtimes": list(runtimes),
        "http_port": http_port,
        "log_level": "info",
        "telemetry": True,
        "telemetry_window_s": 0,
        "telemetry_window_count": window,
    }
    lines = ["# written by hil/run (the edgeops hardware-in-the-loop harness)"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
