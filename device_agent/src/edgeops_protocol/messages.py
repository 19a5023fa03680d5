"""Parsing and building protocol messages with strict, bounded validation.

Every parser takes raw payload bytes and returns a plain dict, or raises
:class:`~edgeops_protocol.topics.ProtocolError` with a one-line reason. Parsers
never trust sizes or types: oversized payloads, malformed JSON, wrong types,
other protocol versions and unknown values are all errors, never crashes.
"""

from __future__ import annotations

import json
import math
from typing import Any

from . import PROTOCOL_VERSION
from .topics import ProtocolError, validate_id

__all__ = [
    "EVENT_KINDS",
    "MAX_MESSAGE_BYTES",
    "decode",
    "event_message",
    "parse_event",
    "parse_state",
    "state_message",
]

MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: a manifest with baseline and test vectors fits easily
EVENT_KINDS = ("rejected", "downloading", "verified", "activated", "failed", "rolled_back")


def decode(payload: bytes, expected_type: str, max_bytes: int = MAX_MESSAGE_BYTES) -> dict:
    """JSON object of a message of ``expected_type``, with the protocol number checked."""
    if not isinstance(payload, (bytes, bytearray)):
        raise ProtocolError("payload must be bytes")
    if len(payload) > max_bytes:
        raise ProtocolError(f"message of {len(payload)} bytes is over the {max_bytes}-byte limit")
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {str(exc)[:80]}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("message must be a JSON object")
    if obj.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol {obj.get('protocol')!r}; this side speaks 1")
    if obj.get("type") != expected_type:
        raise ProtocolError(f"expected a {expected_type!r} message, got {obj.get('type')!r}")
    return obj


def _no_constants(name: str) -> Any:
    raise ProtocolError(f"non-standard JSON constant {name}")


def _str(obj: dict, key: str, limit: int = 256, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"field {key!r} must be a string of at most {limit} characters")
    return value


def _num(obj: dict, key: str, optional: bool = False) -> float | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"field {key!r} must be a finite number")
    return float(value)


def _int(obj: dict, key: str, lo: int = 0, optional: bool = False) -> int | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or value > 2**53:
        raise ProtocolError(f"field {key!r} must be an integer >= {lo}")
    return value


def _model_ref(value: Any, key: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"field {key!r} must be an object or null")
    out = {
        "name": _str(value, "name", 128),
        "version": _int(value, "version", 1),
        "variant": _str(value, "variant", 64),
        "sha256": _str(value, "sha256", 64),
        "seq": _int(value, "seq", 0, optional=True),
    }
    if "activated_at" in value:
        out["activated_at"] = _num(value, "activated_at")
    return out


def parse_state(payload: bytes, max_bytes: int = 64 * 1024) -> dict:
    """A device's reported state (or the offline state its last will publishes)."""
    obj = decode(payload, "state", max_bytes)
    out: dict[str, Any] = {
        "fleet": validate_id(_str(obj, "fleet", 64) or "", "fleet"),
        "device": validate_id(_str(obj, "device", 64) or "", "device"),
        "online": obj.get("online"),
    }
    if not isinstance(out["online"], bool):
        raise ProtocolError("field 'online' must be true or false")
    if not out["online"]:
        out["ts"] = _num(obj, "ts", optional=True)
        return out
    out.update(
        boot=_str(obj, "boot", 64),
        ts=_num(obj, "ts"),
        agent=_str(obj, "agent", 64, optional=True),
        hardware=_str(obj, "hardware", 64),
        accepted_seq=_int(obj, "accepted_seq", 0),
        model=_model_ref(obj.get("model"), "model"),
        previous=_model_ref(obj.get("previous"), "previous"),
    )
    runtimes = obj.get("runtimes")
    if (
        not isinstance(runtimes, list)
        or len(runtimes) > 8
        or not all(isinstance(r, str) and len(r) <= 32 for r in runtimes)
    ):
        raise ProtocolError("field 'runtimes' must be a list of at most 8 short strings")
    tags = obj.get("tags", [])
    if (
        not isinstance(tags, list)
        or len(tags) > 32
        or not all(isinstance(t, str) and len(t) <= 64 for t in tags)
    ):
        raise ProtocolError("field 'tags' must be a list of at most 32 short strings")
    out["runtimes"], out["tags"] = list(runtimes), list(tags)
    return out


def parse_event(payload: bytes, max_bytes: int = 16 * 1024) -> dict:
    """A device's deployment event."""
    obj = decode(payload, "event", max_bytes)
    kind = obj.get("event")
    if kind not in EVENT_KINDS:
        raise ProtocolError(f"unknown event {kind!r}")
    out: dict[str, Any] = {
        "fleet": validate_id(_str(obj, "fleet", 64) or "", "fleet"),
        "device": validate_id(_str(obj, "device", 64) or "", "device"),
        "boot": _str(obj, "boot", 64),
        "ts": _num(obj, "ts"),
        "seq": _int(obj, "seq", 0),
        "deployment": _str(obj, "deployment", 160, optional=True),
        "rollout": _str(obj, "rollout", 64, optional=True),
        "event": kind,
        "reason": _str(obj, "reason", 1024, optional=True) or "",
    }
    if kind == "downloading":
        progress = _num(obj, "progress", optional=True)
        out["progress"] = min(max(progress or 0.0, 0.0), 1.0)
    if kind == "failed":  # the deployment step that failed (download, verify, health, ...)
        out["step"] = _str(obj, "step", 32, optional=True) or ""
    return out


def state_message(**fields: Any) -> bytes:
    return json.dumps({"protocol": PROTOCOL_VERSION, "type": "state", **fields}).encode()


def event_message(**fields: Any) -> bytes:
    if fields.get("event") not in EVENT_KINDS:
        raise ProtocolError(f"unknown event {fields.get('event')!r}")
    return json.dumps({"protocol": PROTOCOL_VERSION, "type": "event", **fields}).encode()
