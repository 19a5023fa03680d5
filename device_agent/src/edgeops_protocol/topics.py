"""MQTT topics of the protocol (docs/protocol.md), built and parsed without a broker.

>>> device_topic("lab", "pi-07", "state")
'edgeops/lab/devices/pi-07/state'
>>> parse_device_topic("edgeops/lab/devices/pi-07/events")
('lab', 'pi-07', 'events')
>>> chunk_topic("lab", "ab" * 32, 3).endswith("/3")
True
"""

from __future__ import annotations

import re

__all__ = [
    "DEVICE_KINDS",
    "ID_RE",
    "ProtocolError",
    "chunk_filter",
    "chunk_topic",
    "device_filter",
    "device_topic",
    "parse_chunk_topic",
    "parse_device_topic",
    "validate_id",
]

ROOT = "edgeops"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # \Z: "$" would let a trailing newline in
SHA_RE = re.compile(r"^[0-9a-f]{64}\Z")
# "ack": the collector's acknowledgements of stored windows and samples (server -> device)
DEVICE_KINDS = ("state", "desired", "events", "telemetry", "samples", "labels", "ack")


class ProtocolError(ValueError):
    """A topic or message that does not follow the protocol."""


def validate_id(value: str, what: str = "id") -> str:
    """Fleet and device ids: 1-64 of letters, digits, ``_ . -``; never ``/ + #``."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ProtocolError(
            f"{what} {value!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


def device_topic(fleet: str, device: str, kind: str) -> str:
    validate_id(fleet, "fleet")
    validate_id(device, "device")
    if kind not in DEVICE_KINDS:
        raise ProtocolError(f"unknown device topic kind {kind!r}")
    return f"{ROOT}/{fleet}/devices/{device}/{kind}"


def device_filter(fleet: str, kind: str, device: str = "+") -> str:
    """Subscription filter for one kind of message from every device (or one) of a fleet."""
    validate_id(fleet, "fleet")
    if device != "+":
        validate_id(device, "device")
    return f"{ROOT}/{fleet}/devices/{device}/{kind}"


def parse_device_topic(topic: str) -> tuple[str, str, str]:
    """``(fleet, device, kind)`` of a device topic; :class:`ProtocolError` otherwise."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != ROOT or parts[2] != "devices":
        raise ProtocolError(f"not an edgeops device topic: {topic!r}")
    _, fleet, _, device, kind = parts
    validate_id(fleet, "fleet")
    validate_id(device, "device")
    if kind not in DEVICE_KINDS:
        raise ProtocolError(f"unknown device topic kind {kind!r}")
    return fleet, device, kind


def chunk_topic(fleet: str, sha256: str, index: int) -> str:
    validate_id(fleet, "fleet")
    if not SHA_RE.match(sha256):
        raise ProtocolError("artifact id must be a lowercase SHA-256 hex digest")
    if index < 0:
        raise ProtocolError("chunk index must be >= 0")
    return f"{ROOT}/{fleet}/artifacts/{sha256}/{index}"


def chunk_filter(fleet: str, sha256: str) -> str:
    return chunk_topic(fleet, sha256, 0).rsplit("/", 1)[0] + "/+"


def parse_chunk_topic(topic: str) -> tuple[str, str, int]:
    """``(fleet, sha256, index)`` of an artifact chunk topic."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != ROOT or parts[2] != "artifacts":
        raise ProtocolError(f"not an edgeops artifact topic: {topic!r}")
    _, fleet, _, sha, index = parts
    validate_id(fleet, "fleet")
    if not SHA_RE.match(sha) or not index.isdigit() or len(index) > 9:
        raise ProtocolError(f"bad artifact chunk topic: {topic!r}")
    return fleet, sha, int(index)
