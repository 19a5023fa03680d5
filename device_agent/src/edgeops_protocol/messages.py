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
    "ACK_KINDS",
    "ACK_MAX_KEYS",
    "EVENT_KINDS",
    "MAX_MESSAGE_BYTES",
    "ack_message",
    "decode",
    "event_message",
    "label_message",
    "parse_ack",
    "parse_event",
    "parse_label",
    "parse_sample",
    "parse_state",
    "parse_telemetry",
    "sample_message",
    "state_message",
    "telemetry_message",
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
    version = obj.get("protocol")
    if type(version) is not int or version != PROTOCOL_VERSION:  # true == 1 in Python
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


def _finite(value: Any) -> bool:
    """A JSON number that is a finite float (huge integers would overflow ``float()``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return abs(value) <= 2**1000
    return math.isfinite(value)


def _num(obj: dict, key: str, optional: bool = False) -> float | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, (int, float)) or not _finite(value):
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
    out: dict[str, Any] = {
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
    """A device's reported state (or the offline state its last will publishes).

    ``flash_bytes`` and ``ram_bytes`` are kept when the device declares them (positive
    integers; anything else is a malformed state)."""
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
        outbox_dropped=_int(obj, "outbox_dropped", 0, optional=True),
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
    # optional: the flash and RAM a device offers its firmware (rollouts check footprints)
    for key in ("flash_bytes", "ram_bytes"):
        value = _int(obj, key, 1, optional=True)
        if value is not None:
            out[key] = value
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


# --- monitoring: telemetry windows, samples, labels (docs/protocol.md) ----------------

MAX_FEATURES = 4096  # input features of a model a window or a sample may describe
MAX_BINS = 1026  # counts per histogram: 1024 interior bins plus under- and overflow
MAX_CLASSES = 1024
MAX_VALUES = 4096  # values of one list in a sample (features, outputs, one input column)
MAX_INPUT_COLUMNS = 256
LATENCY_BINS = 16  # len(edgeops_protocol.stats.LATENCY_EDGES_MS) + 1: fixed by the protocol


def _dumps(kind: str, fields: dict[str, Any]) -> bytes:
    """Compact JSON; NaN and infinities are refused (they are not JSON)."""
    body = {"protocol": PROTOCOL_VERSION, "type": kind, **fields}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def _counts(obj: dict, key: str, total: int, lo: int = 1, hi: int = MAX_BINS) -> list[int]:
    """A list of ``lo..hi`` non-negative integer counts adding up to at most ``total``."""
    value = obj.get(key)
    if not isinstance(value, list) or not lo <= len(value) <= hi:
        raise ProtocolError(f"field {key!r} must be a list of {lo} to {hi} counts")
    for c in value:
        if isinstance(c, bool) or not isinstance(c, int) or c < 0 or c > 2**53:
            raise ProtocolError(f"field {key!r} must hold integers >= 0")
    if sum(value) > total:
        raise ProtocolError(f"field {key!r} counts more than the window's {total} predictions")
    return list(value)


def _window_stats(stats: Any) -> dict[str, Any]:
    if not isinstance(stats, dict):
        raise ProtocolError("field 'stats' must be an object")
    if stats.get("format") != 1:
        raise ProtocolError(f"unsupported stats format {stats.get('format')!r}; this side reads 1")
    count = _int(stats, "count", 0) or 0
    errors = _int(stats, "errors", 0) or 0
    non_finite = _int(stats, "non_finite_outputs", 0) or 0
    if errors + non_finite > count:
        raise ProtocolError("errors and non_finite_outputs add up to more than count")
    features = stats.get("features")
    if not isinstance(features, list) or len(features) > MAX_FEATURES:
        raise ProtocolError(f"field 'features' must be a list of at most {MAX_FEATURES} lists")
    # each feature has at least 2 edges: underflow, one bin, overflow
    feature_counts = [_counts({"features": f}, "features", count, lo=3) for f in features]
    n = len(features)
    non_finite_features = _counts(stats, "feature_non_finite", count * n, lo=n, hi=n)
    for j, fc in enumerate(feature_counts):
        if sum(fc) + non_finite_features[j] > count:
            raise ProtocolError(f"feature {j} counts more values than the window's predictions")
    out: dict[str, Any] = {
        "format": 1,
        "count": count,
        "errors": errors,
        "non_finite_outputs": non_finite,
        "features": feature_counts,
        "feature_non_finite": non_finite_features,
        "class_counts": _counts(stats, "class_counts", count, hi=MAX_CLASSES),
        "confidence_counts": _counts(stats, "confidence_counts", count, lo=3),
        "latency_counts": _counts(stats, "latency_counts", count, LATENCY_BINS, LATENCY_BINS),
        "latency_sum_ms": _num(stats, "latency_sum_ms"),
        "latency_max_ms": _num(stats, "latency_max_ms"),
    }
    if out["latency_sum_ms"] < 0 or out["latency_max_ms"] < 0:
        raise ProtocolError("latency_sum_ms and latency_max_ms must be >= 0")
    return out


def _device_fields(obj: dict) -> dict[str, Any]:
    return {
        "fleet": validate_id(_str(obj, "fleet", 64) or "", "fleet"),
        "device": validate_id(_str(obj, "device", 64) or "", "device"),
    }


def _required_ref(obj: dict) -> dict:
    ref = _model_ref(obj.get("model"), "model")
    if ref is None:
        raise ProtocolError("field 'model' must name the model the message is about")
    if ref["seq"] is None:
        del ref["seq"]
    return ref


def parse_telemetry(payload: bytes, max_bytes: int = 256 * 1024) -> dict:
    """One statistics window of one device (``type: telemetry``).

    Every count is a non-negative integer and no histogram counts more values than
    the window had predictions; list lengths are bounded (:data:`MAX_FEATURES`,
    :data:`MAX_BINS`, :data:`MAX_CLASSES`, exactly :data:`LATENCY_BINS` latency bins).
    """
    obj = decode(payload, "telemetry", max_bytes)
    out: dict[str, Any] = _device_fields(obj)
    out.update(
        boot=_str(obj, "boot", 64),
        seq=_int(obj, "seq", 1),
        start=_num(obj, "start"),
        end=_num(obj, "end"),
        model=_required_ref(obj),
        stats=_window_stats(obj.get("stats")),
    )
    if out["end"] < out["start"]:
        raise ProtocolError("field 'end' must not be before 'start'")
    return out


def _scalar(value: Any) -> bool:
    if value is None or isinstance(value, bool) or _finite(value):
        return True
    return isinstance(value, str) and len(value) <= 1024


def _values(obj: dict, key: str, *, numbers_only: bool = True) -> list:
    """A list of at most :data:`MAX_VALUES` finite numbers (or, in a raw input column,
    scalars: numbers, strings, booleans, null)."""
    value = obj.get(key)
    if not isinstance(value, list) or len(value) > MAX_VALUES:
        raise ProtocolError(f"field {key!r} must be a list of at most {MAX_VALUES} values")
    for v in value:
        if not (_finite(v) or (not numbers_only and _scalar(v))):
            what = "finite numbers" if numbers_only else "scalars"
            raise ProtocolError(f"field {key!r} must hold {what} only")
    return list(value)


def _sample_input(value: Any) -> dict | None:
    """The raw sample as the application gave it: column -> scalar or list of scalars."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_INPUT_COLUMNS:
        raise ProtocolError(
            f"field 'input' must be null or an object of at most {MAX_INPUT_COLUMNS} columns"
        )
    for k, v in value.items():
        if len(k) > 128:
            raise ProtocolError("field 'input' has a column name over 128 characters")
        if isinstance(v, list):
            _values({"input": v}, "input", numbers_only=False)
        elif not _scalar(v):
            raise ProtocolError(f"input column {k[:40]!r} must be a scalar or a list of scalars")
    return dict(value)


def parse_sample(payload: bytes, max_bytes: int = 256 * 1024) -> dict:
    """One sampled prediction (``type: sample``); ``sample_id`` is ``<device>/<boot>/<seq>``.

    ``features`` and ``outputs`` are finite numbers (a device does not sample a
    prediction with non-finite values) and ``predicted`` is the predicted label; the raw
    ``input`` is null or the application's row: scalars and lists of scalars by column.
    """
    obj = decode(payload, "sample", max_bytes)
    out: dict[str, Any] = _device_fields(obj)
    out.update(
        boot=_str(obj, "boot", 64),
        seq=_int(obj, "seq", 1),
        ts=_num(obj, "ts"),
        sample_id=_str(obj, "sample_id", 200),
        model=_required_ref(obj),
        input=_sample_input(obj.get("input")),
        features=_values(obj, "features"),
        outputs=_values(obj, "outputs"),
        predicted=_str(obj, "predicted", 128),
    )
    if not out["predicted"]:
        raise ProtocolError("field 'predicted' must not be empty")
    if out["sample_id"] != f"{out['device']}/{out['boot']}/{out['seq']}":
        raise ProtocolError("field 'sample_id' must be '<device>/<boot>/<seq>' of this sample")
    return out


def parse_label(payload: bytes, max_bytes: int = 4 * 1024) -> dict:
    """Ground truth for a sample (``type: label``), from the device that sampled it."""
    obj = decode(payload, "label", max_bytes)
    out: dict[str, Any] = _device_fields(obj)
    out.update(
        sample_id=_str(obj, "sample_id", 200),
        label=_str(obj, "label", 128),
        ts=_num(obj, "ts"),
    )
    if not out["label"]:
        raise ProtocolError("field 'label' must not be empty")
    if not out["sample_id"].startswith(out["device"] + "/"):
        raise ProtocolError("field 'sample_id' must be a sample of the device that labels it")
    return out


def telemetry_message(**fields: Any) -> bytes:
    """A ``telemetry`` message: fleet, device, boot, seq, start, end, model, stats."""
    return _dumps("telemetry", fields)


def sample_message(**fields: Any) -> bytes:
    """A ``sample`` message (NaN and infinities are refused: they are not JSON)."""
    return _dumps("sample", fields)


def label_message(**fields: Any) -> bytes:
    """A ``label`` message: fleet, device, sample_id, label, ts."""
    return _dumps("label", fields)


ACK_MAX_KEYS = 4096  # (boot, seq) pairs in one ack message, at most
ACK_KINDS = ("telemetry", "samples")


def ack_message(**fields: Any) -> bytes:
    """An ``ack`` message (collector -> device): fleet, device, and per kind
    (``telemetry``, ``samples``) the ``[boot, seq]`` pairs the collector has committed."""
    return _dumps("ack", fields)


def parse_ack(payload: bytes, max_bytes: int = 256 * 1024) -> dict:
    """The collector's acknowledgements for one device: ``{"fleet", "device", "telemetry":
    [(boot, seq), ...], "samples": [...]}`` (each list possibly empty)."""
    obj = decode(payload, "ack", max_bytes)
    out: dict[str, Any] = _device_fields(obj)
    total = 0
    for kind in ACK_KINDS:
        value = obj.get(kind, [])
        if not isinstance(value, list):
            raise ProtocolError(f"field {kind!r} must be a list of [boot, seq] pairs")
        pairs = []
        for item in value:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not isinstance(item[0], str)
                or not 0 < len(item[0]) <= 64
                or not isinstance(item[1], int)
                or isinstance(item[1], bool)
                or not 1 <= item[1] < 2**63
            ):
                raise ProtocolError(f"field {kind!r} must be a list of [boot, seq] pairs")
            pairs.append((item[0], item[1]))
        total += len(pairs)
        out[kind] = pairs
    if total > ACK_MAX_KEYS:
        raise ProtocolError(f"an ack message acknowledges at most {ACK_MAX_KEYS} messages")
    return out
