"""Strict, bounded validation of the monitoring messages: telemetry, samples, labels.

Pure functions of their inputs (no database, no MQTT), so every rule is tested
without a broker. A parser takes the raw payload and returns a plain dict, or
raises :class:`Rejected` with a stable ``reason`` (what the collector counts in
``ingest_counters``) and a one-line detail. Sizes are checked before JSON is
parsed, and every list and string has a bound, so a hostile payload costs at
most ``max_bytes`` of parsing.

:func:`check_window` and :func:`check_sample` then check a parsed message
against the :class:`Shape` of the model variant it names (bins per feature,
classes, confidence bins), which the collector looks up in the registry.

>>> parse_label(b'{"protocol": 1, "type": "label", "fleet": "lab", "device": "d1",'
...             b' "sample_id": "d1/b/4", "label": "run", "ts": 5}')["label"]
'run'
>>> try:
...     parse_label(b"x" * 5000)
... except Rejected as exc:
...     print(exc.reason)
oversized
"""

from __future__ import annotations

import json
import math
import re
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import Any

from edgeops_protocol import PROTOCOL_VERSION
from edgeops_protocol.baseline import CONFIDENCE_EDGES
from edgeops_protocol.stats import LATENCY_EDGES_MS, STATS_FORMAT
from edgeops_protocol.topics import ID_RE

__all__ = [
    "JSON_LIBRARY",
    "MAX_BYTES",
    "REASONS",
    "Rejected",
    "Shape",
    "WindowBatch",
    "check_sample",
    "check_window",
    "dumps",
    "parse_label",
    "parse_sample",
    "parse_telemetry",
    "shape_of",
]

# Stable reason strings: stored in ingest_counters, shown by the CLI, relied on by alerts.
REASONS = (
    "oversized",  # payload above the size limit of its kind (checked before parsing)
    "malformed",  # not JSON, wrong protocol/type, wrong types, bounds exceeded
    "negative_counts",  # a count below zero
    "inconsistent_counts",  # a histogram holding more values than the window's predictions
    "wrong_device_topic",  # fleet/device in the payload differ from the topic's
    "unknown_device",  # not in the fleet registry (never published a state)
    "unknown_model",  # name/version/variant/sha256 not in the model registry
    "wrong_bins",  # histogram lengths differ from the variant's baseline
    "wrong_shape",  # a sample's features/outputs/predicted do not fit the variant
    "duplicate",  # (device, boot, seq) or sample_id already stored; a label already set
    "out_of_order",  # far older than the newest window of its boot (see REORDER_WINDOW)
    "unknown_sample",  # a label for a sample that is not stored
    "internal_error",  # storing it raised an unexpected error (a bug): logged with a trace
)

MAX_BYTES = {
    "telemetry": 256 * 1024,
    "samples": 256 * 1024,
    "labels": 4 * 1024,
    "events": 16 * 1024,
    "state": 64 * 1024,
}
MAX_FEATURES = 4096  # features of one model (histograms per window, values per sample)
MAX_BINS = 1026  # counts per histogram: 1024 interior bins + underflow + overflow
MAX_CLASSES = 1024
MAX_VALUES = 4096  # values of one list in a sample (features, outputs, one input column)
MAX_INPUT_COLUMNS = 256
MAX_COUNT = 2**53
_MAX_INT_NUMBER = 2**1000  # an integer where a number is expected: as edgeops_protocol
# \Z, not $: "$" also matches before a final newline, and "abc\n" is not printable
SHA_RE = re.compile(r"^[0-9a-f]{64}\Z")
PRINTABLE_RE = re.compile(r"^[^\x00-\x1f\x7f]+\Z")
_LIST = {list}


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _std_loads(data: bytes) -> Any:
    return json.loads(data, parse_constant=_no_constant)


def _std_dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


# orjson, when installed, parses about twice as fast and serializes ten times as fast as json;
# both reject NaN and Infinity and invalid UTF-8, so they accept exactly the same messages.
loads: Callable[[bytes], Any] = _std_loads
dumps: Callable[[Any], str] = _std_dumps
JSON_LIBRARY = "json"
try:
    import orjson

    loads = orjson.loads
    dumps = lambda obj: orjson.dumps(obj).decode()  # noqa: E731
    JSON_LIBRARY = "orjson"
except ModuleNotFoundError:  # pragma: no cover - depends on the environment
    pass


class Rejected(ValueError):
    """A message the collector refuses, with the reason it is counted under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _bad(detail: str) -> Rejected:
    return Rejected("malformed", detail)


def _decode(payload: bytes, kind: str, expected_type: str, max_bytes: int | None) -> dict:
    limit = MAX_BYTES[kind] if max_bytes is None else max_bytes
    if not isinstance(payload, (bytes, bytearray)):
        raise _bad("payload must be bytes")
    if len(payload) > limit:
        raise Rejected("oversized", f"{len(payload)} bytes, over the {limit}-byte limit")
    try:
        obj = loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"not JSON: {str(exc)[:80]}") from exc
    if not isinstance(obj, dict):
        raise _bad("message must be a JSON object")
    version = obj.get("protocol")
    if type(version) is not int or version != PROTOCOL_VERSION:  # true == 1 in Python
        raise _bad(f"protocol {version!r}; this side speaks {PROTOCOL_VERSION}")
    if obj.get("type") != expected_type:
        raise _bad(f"expected a {expected_type!r} message, got {obj.get('type')!r}")
    return obj


def _id(obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not ID_RE.match(value):
        raise _bad(f"field {key!r} must be an id (1-64 letters, digits, '_', '.', '-')")
    return value


def _text(obj: dict, key: str, limit: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= limit or not PRINTABLE_RE.match(value):
        raise _bad(f"field {key!r} must be a printable string of 1-{limit} characters")
    return value


def _number(obj: dict, key: str, lo: float = -math.inf) -> float:
    value = obj.get(key)
    if (
        type(value) not in (int, float)
        or (type(value) is int and abs(value) > _MAX_INT_NUMBER)  # float() would overflow
        or not math.isfinite(value)
        or value < lo
    ):
        raise _bad(f"field {key!r} must be a finite number >= {lo}")
    return float(value)


def _int(obj: dict, key: str, lo: int) -> int:
    value = obj.get(key)
    if type(value) is not int or not lo <= value <= MAX_COUNT:
        raise _bad(f"field {key!r} must be an integer >= {lo}")
    return value


def _count(obj: dict, key: str) -> int:
    value = obj.get(key)
    if isinstance(value, int) and value < 0:
        raise Rejected("negative_counts", f"field {key!r} is {value}")
    return _int(obj, key, 0)


def _check_ints(values: list, key: str) -> None:
    """Every value a non-negative integer below 2**64, in one C-level pass (array "Q");
    booleans are caught by :func:`_no_booleans`."""
    try:
        array("Q", values)
    except (TypeError, OverflowError) as exc:
        # array stops at the first bad item: look at them all, so the order does not matter
        if isinstance(exc, TypeError) or not all(type(v) in (int, bool) for v in values):
            raise _bad(f"field {key!r} must hold integers only") from None
        if min(values) < 0:
            raise Rejected("negative_counts", f"field {key!r} has a negative count") from None
        raise _bad(f"field {key!r} has a count above 2**64") from None


def _counts(value: Any, key: str, limit: int) -> list[int]:
    """A list of at most ``limit`` non-negative integers."""
    if type(value) is not list or len(value) > limit:
        raise _bad(f"field {key!r} must be a list of at most {limit} counts")
    _check_ints(value, key)
    return value


def _histograms(value: Any) -> list[list[int]]:
    """The feature histograms: lists of counts, checked in a few C-level passes."""
    if type(value) is not list or len(value) > MAX_FEATURES:
        raise _bad(f"field 'features' must be a list of at most {MAX_FEATURES} histograms")
    if not value:
        return value
    if set(map(type, value)) != _LIST or max(map(len, value)) > MAX_BINS:
        raise _bad(f"field 'features' must hold lists of at most {MAX_BINS} counts")
    _check_ints(list(chain.from_iterable(value)), "features")
    return value


def _no_booleans(payload: bytes, stats: dict[str, Any]) -> None:
    """JSON true and false are ints to Python, and no count may be one. Telemetry has no
    boolean field, so a payload without those words needs no closer look."""
    if b"true" not in payload and b"false" not in payload:
        return
    for v in stats.values():
        items = (
            chain.from_iterable(x if type(x) is list else (x,) for x in v)
            if type(v) is list
            else (v,)
        )
        if any(x is True or x is False for x in items):
            raise _bad("counts must be integers, not true or false")


def _numbers(value: Any, key: str, limit: int) -> list[float]:
    if type(value) is not list or len(value) > limit:
        raise _bad(f"field {key!r} must be a list of at most {limit} numbers")
    if not all(type(v) in (int, float) and math.isfinite(v) for v in value):
        raise _bad(f"field {key!r} must hold finite numbers only")
    return value


def _model(obj: dict) -> dict[str, Any]:
    m = obj.get("model")
    if not isinstance(m, dict):
        raise _bad("field 'model' must be an object")
    sha = m.get("sha256")
    if not isinstance(sha, str) or not SHA_RE.match(sha):
        raise _bad("field 'model.sha256' must be a lowercase SHA-256 hex digest")
    version = m.get("version")
    if type(version) is not int or not 1 <= version <= MAX_COUNT:
        raise _bad("field 'model.version' must be an integer >= 1")
    return {
        "name": _text(m, "name", 128),
        "version": version,
        "variant": _text(m, "variant", 64),
        "sha256": sha,
    }


def parse_telemetry(
    payload: bytes, max_bytes: int | None = None, batch: WindowBatch | None = None
) -> dict[str, Any]:
    """A telemetry window (docs/protocol.md, "Telemetry"), checked for types and bounds.

    Two paths, one verdict: :func:`_fast_telemetry` accepts a well-formed window with as
    few Python-level steps as it can and gives up (``None``) at the first doubt; the
    strict path then decides, and is the only one that rejects, so every reason and
    detail is the strict path's. The fast path never accepts what the strict one refuses
    (tests/test_ingest.py checks both on the same inputs).

    With ``batch``, one rule (no feature histogram counts more values than ``count``) may
    be left to :meth:`WindowBatch.failed`, which checks it for every window of the batch
    at once: such a window comes back with a ``"_ticket"`` key (to remove), and if
    ``failed()`` names its ticket it must be parsed again without ``batch``, which then
    rejects it (:meth:`edgeops.monitoring.ingest.Ingestor.prepare` does this).
    """
    limit = MAX_BYTES["telemetry"] if max_bytes is None else max_bytes
    if type(payload) is bytes and len(payload) <= limit:
        try:
            obj = loads(payload)
        except Exception:  # the strict path parses it again and says why
            obj = None
        if type(obj) is dict:
            out = _fast_telemetry(obj, payload, batch)
            if out is not None:
                return out
    return _strict_telemetry(payload, max_bytes)


class WindowBatch:
    """The windows of one batch whose feature histograms are still to be added up, in one
    array: the counts of each window back to back (features, then non-finite counts)."""

    def __init__(self) -> None:
        self.counts = array("Q")
        # by layout (bins per feature): the windows' tickets, where they start, their count
        self._groups: dict[tuple[int, ...], tuple[list[int], list[int], list[int]]] = {}
        self._last: tuple[tuple[int, ...], tuple[list[int], list[int], list[int]]] | None = None
        self._next = 0

    def _defer(self, base: int, lens: tuple[int, ...], count: int) -> int:
        """Remember a window whose counts start at ``base``; its ticket."""
        ticket = self._next
        self._next += 1
        last = self._last
        if last is not None and last[0] == lens:  # the usual case: one layout per batch
            group = last[1]
        else:
            group = self._groups.setdefault(lens, ([], [], []))
            self._last = (lens, group)
        group[0].append(ticket)
        group[1].append(base)
        group[2].append(count)
        return ticket

    def failed(self) -> set[int]:
        """Tickets of the windows a feature of which counts more values than ``count``
        (numpy: segment sums of the one array, per group of windows of the same layout)."""
        import numpy as np

        groups, self._groups, self._last = self._groups, {}, None
        if not groups:
            return set()
        x = np.frombuffer(self.counts, dtype=np.uint64)
        bad: set[int] = set()
        if int(x.max()) > MAX_COUNT:  # could wrap around in uint64 sums: add up in Python
            for lens, (tickets, bases, counts) in groups.items():
                for ticket, base, count in zip(tickets, bases, counts):  # noqa: B905
                    if self._over(base, lens, count):
                        bad.add(ticket)
            return bad
        for lens, (tickets, bases, counts) in groups.items():
            n = len(lens)
            rel = np.zeros(n + 1, dtype=np.int64)  # each histogram's start, then nf's
            np.cumsum(lens, out=rel[1:])
            b = np.array(bases, dtype=np.int64)[:, None]
            sums = np.add.reduceat(x, (b + rel).ravel()).reshape(len(bases), n + 1)[:, :n]
            sums += x[b + (rel[n] + np.arange(n))]  # the non-finite values of each feature
            over = (sums > np.array(counts, dtype=np.uint64)[:, None]).any(axis=1)
            if over.any():
                bad.update(np.array(tickets)[over].tolist())
        return bad

    def _over(self, base: int, lens: tuple[int, ...], count: int) -> bool:
        c, i, n = self.counts, base, sum(lens)
        top = 0
        for k, extra in zip(lens, c[base + n : base + n + len(lens)]):  # noqa: B905
            top = max(top, sum(c[i : i + k]) + extra)
            i += k
        return top > count


# Strings already found valid (ids; printable text), and valid model references: most
# windows repeat the fleet, device, boot and model of earlier ones. Bounded: cleared when
# full. Only ever holds what the strict checks accepted.
_KNOWN_IDS: set[str] = set()
_KNOWN_TEXT: set[str] = set()
_KNOWN_MODELS: dict[tuple[str, int, str, str], dict[str, Any]] = {}
_KNOWN_MAX = 1 << 16
_INF = math.inf


def _known(value: Any, known: set[str], pattern: re.Pattern[str]) -> bool:
    """``value`` is a str matching ``pattern`` (remembered in ``known``)."""
    if type(value) is not str:
        return False
    if value in known:
        return True
    if not pattern.match(value):
        return False
    if len(known) >= _KNOWN_MAX:
        known.clear()
    known.add(value)
    return True


def _fast_model(m: Any) -> dict[str, Any] | None:
    if type(m) is not dict:
        return None
    key = (m.get("name"), m.get("version"), m.get("variant"), m.get("sha256"))
    if type(key[1]) is not int:  # so that True or 1.0 never finds version 1's entry
        return None
    try:
        hit = _KNOWN_MODELS.get(key)  # type: ignore[arg-type]
    except TypeError:  # an unhashable name, variant or digest
        return None
    if hit is None:
        try:
            hit = _model({"model": m})
        except Rejected:
            return None
        if len(_KNOWN_MODELS) >= _KNOWN_MAX:
            _KNOWN_MODELS.clear()
        _KNOWN_MODELS[key] = hit  # type: ignore[index]
    return dict(hit)


def _fast_number(value: Any) -> float | None:
    """A finite number >= 0 (as float), or None."""
    if type(value) is float:
        return value if 0.0 <= value < _INF else None
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return float(value)
    return None


def _fast_telemetry(
    obj: dict, payload: bytes, batch: WindowBatch | None = None
) -> dict[str, Any] | None:
    """A valid window exactly as :func:`_strict_telemetry` returns it, or None when it is
    not plainly valid (then the strict path decides). Every test here is one of the
    strict path's rules, or stricter. With ``batch`` the feature sums are left to it: the
    window then carries its ticket (``"_ticket"``, which the caller removes)."""
    get = obj.get
    version = get("protocol")
    if type(version) is not int or version != PROTOCOL_VERSION or get("type") != "telemetry":
        return None
    fleet, device, boot, seq = get("fleet"), get("device"), get("boot"), get("seq")
    if not (
        _known(fleet, _KNOWN_IDS, ID_RE)
        and _known(device, _KNOWN_IDS, ID_RE)
        and _known(boot, _KNOWN_TEXT, PRINTABLE_RE)
        and len(boot) <= 64
        and type(seq) is int
        and 1 <= seq <= MAX_COUNT
    ):
        return None
    start, end = get("start"), get("end")
    if type(start) is not float or type(end) is not float or not -_INF < start <= end < _INF:
        return None  # (integers, and everything else, take the strict path)
    model = _fast_model(get("model"))
    stats = get("stats")
    if model is None or type(stats) is not dict or stats.get("format") != STATS_FORMAT:
        return None
    get = stats.get
    count, errors, nfo = get("count"), get("errors"), get("non_finite_outputs")
    if not (
        type(count) is int
        and type(errors) is int
        and type(nfo) is int
        and 0 <= count <= MAX_COUNT
        and 0 <= errors <= count
        and 0 <= nfo <= count
    ):
        return None
    features, nf = get("features"), get("feature_non_finite")
    classes, conf, lat = get("class_counts"), get("confidence_counts"), get("latency_counts")
    if not (
        type(features) is list
        and type(nf) is list
        and type(classes) is list
        and type(conf) is list
        and type(lat) is list
        and len(features) == len(nf) <= MAX_FEATURES
        and len(classes) <= MAX_CLASSES
        and len(conf) <= MAX_BINS
        and len(lat) <= MAX_BINS
    ):
        return None
    lat_sum, lat_max = _fast_number(get("latency_sum_ms")), _fast_number(get("latency_max_ms"))
    if lat_sum is None or lat_max is None:
        return None
    counts = array("Q") if batch is None else batch.counts
    base = len(counts)
    try:  # every histogram a list, every count an integer in [0, 2**64), in C: fromlist
        for h in features:  # takes lists only and stores each item as an unsigned 64-bit
            counts.fromlist(h)
        counts.fromlist(nf)
        counts.fromlist(classes)
        counts.fromlist(conf)
        counts.fromlist(lat)
    except (TypeError, OverflowError):
        del counts[base:]
        return None
    # JSON true and false are ints to Python (and to fromlist); rfind is the quicker scan
    if (
        payload.rfind(b"true") >= 0
        or payload.rfind(b"false") >= 0
        or sum(classes) > count
        or sum(conf) > count
        or sum(lat) > count
    ):
        del counts[base:]
        return None
    ticket = None
    if features:
        lens = tuple(map(len, features))
        if max(lens) > MAX_BINS:
            del counts[base:]
            return None
        if batch is not None and 0 not in lens:  # (numpy's reduceat: no empty segments)
            ticket = batch._defer(base, lens, count)
        else:
            top = max(map(sum, features))
            if top + max(nf) > count and max(map(int.__add__, map(sum, features), nf)) > count:
                del counts[base:]
                return None
    if ticket is None and batch is not None:
        del counts[base:]  # nothing left to check
    out = {
        "fleet": fleet,
        "device": device,
        "boot": boot,
        "seq": seq,
        "start": start,
        "end": end,
        "model": model,
        "stats": {
            "format": STATS_FORMAT,
            "count": count,
            "errors": errors,
            "non_finite_outputs": nfo,
            "features": features,
            "feature_non_finite": nf,
            "class_counts": classes,
            "confidence_counts": conf,
            "latency_counts": lat,
            "latency_sum_ms": lat_sum,
            "latency_max_ms": lat_max,
        },
    }
    if ticket is not None:
        out["_ticket"] = ticket
    return out


def _strict_telemetry(payload: bytes, max_bytes: int | None = None) -> dict[str, Any]:
    """Every rule, in order, with the reason of the first one broken."""
    obj = _decode(payload, "telemetry", "telemetry", max_bytes)
    out: dict[str, Any] = {
        "fleet": _id(obj, "fleet"),
        "device": _id(obj, "device"),
        "boot": _text(obj, "boot", 64),
        "seq": _int(obj, "seq", 1),
        "start": _number(obj, "start"),
        "end": _number(obj, "end"),
        "model": _model(obj),
    }
    if out["end"] < out["start"]:
        raise _bad("window ends before it starts")
    stats = obj.get("stats")
    if not isinstance(stats, dict):
        raise _bad("field 'stats' must be an object")
    if stats.get("format") != STATS_FORMAT:
        raise _bad(f"stats format {stats.get('format')!r}; this side reads {STATS_FORMAT}")
    count = _count(stats, "count")
    features = _histograms(stats.get("features"))
    clean = {
        "format": STATS_FORMAT,
        "count": count,
        "errors": _count(stats, "errors"),
        "non_finite_outputs": _count(stats, "non_finite_outputs"),
        "features": features,
        "feature_non_finite": _counts(
            stats.get("feature_non_finite"), "feature_non_finite", MAX_FEATURES
        ),
        "class_counts": _counts(stats.get("class_counts"), "class_counts", MAX_CLASSES),
        "confidence_counts": _counts(stats.get("confidence_counts"), "confidence_counts", MAX_BINS),
        "latency_counts": _counts(stats.get("latency_counts"), "latency_counts", MAX_BINS),
        "latency_sum_ms": _number(stats, "latency_sum_ms", 0.0),
        "latency_max_ms": _number(stats, "latency_max_ms", 0.0),
    }
    _no_booleans(payload, clean)
    if len(clean["feature_non_finite"]) != len(features):
        raise Rejected("wrong_bins", "feature_non_finite needs one count per feature")
    for key in ("errors", "non_finite_outputs"):
        if clean[key] > count:
            raise Rejected("inconsistent_counts", f"{key} {clean[key]} > count {count}")
    for key in ("class_counts", "confidence_counts", "latency_counts"):
        if sum(clean[key]) > count:
            raise Rejected("inconsistent_counts", f"{key} add up to more than count {count}")
    totals = map(int.__add__, map(sum, features), clean["feature_non_finite"])
    if features and max(totals) > count:
        raise Rejected("inconsistent_counts", f"a feature counts more values than count {count}")
    out["stats"] = clean
    return out


def _scalar(v: Any) -> bool:
    """A raw input value: a finite number, a short string, true, false or null."""
    if v is None or type(v) is bool:
        return True
    if type(v) is str:
        return len(v) <= 1024
    return type(v) in (int, float) and math.isfinite(v)


def _raw_input(raw: Any) -> dict[str, Any] | None:
    """The application's row as sampled: column -> scalar or list of scalars, or null."""
    if raw is None:
        return None
    if type(raw) is not dict or len(raw) > MAX_INPUT_COLUMNS:
        raise _bad(f"field 'input' must be null or at most {MAX_INPUT_COLUMNS} columns")
    for name, col in raw.items():
        if len(name) > 128:
            raise _bad("input column names must be at most 128 characters")
        values = col if type(col) is list else (col,)
        if len(values) > MAX_VALUES or not all(map(_scalar, values)):
            raise _bad(f"input column {name[:40]!r} must be scalars (at most {MAX_VALUES})")
    return raw


def parse_sample(payload: bytes, max_bytes: int | None = None) -> dict[str, Any]:
    """A sampled prediction (docs/protocol.md, "Samples and labels"); ``sample_id`` is
    ``<device>/<boot>/<seq>``."""
    obj = _decode(payload, "samples", "sample", max_bytes)
    out: dict[str, Any] = {
        "fleet": _id(obj, "fleet"),
        "device": _id(obj, "device"),
        "boot": _text(obj, "boot", 64),
        "seq": _int(obj, "seq", 1),
        "ts": _number(obj, "ts"),
        "sample_id": _text(obj, "sample_id", 200),
        "model": _model(obj),
        "input": _raw_input(obj.get("input")),
        "features": _numbers(obj.get("features"), "features", MAX_VALUES),
        "outputs": _numbers(obj.get("outputs"), "outputs", MAX_VALUES),
        "predicted": _text(obj, "predicted", 128),
    }
    if not out["sample_id"].startswith(out["device"] + "/"):
        raise Rejected("wrong_device_topic", "sample_id must start with '<device>/'")
    if out["sample_id"] != f"{out['device']}/{out['boot']}/{out['seq']}":
        raise _bad("sample_id must be '<device>/<boot>/<seq>' of the sample")
    return out


def parse_label(payload: bytes, max_bytes: int | None = None) -> dict[str, Any]:
    """Ground truth for a stored sample of the device that sends it."""
    obj = _decode(payload, "labels", "label", max_bytes)
    out = {
        "fleet": _id(obj, "fleet"),
        "device": _id(obj, "device"),
        "sample_id": _text(obj, "sample_id", 200),
        "label": _text(obj, "label", 128),
        "ts": _number(obj, "ts"),
    }
    if not out["sample_id"].startswith(out["device"] + "/"):
        raise Rejected("wrong_device_topic", "a device may only label its own samples")
    return out


# --- against the model ----------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What a variant's windows and samples must look like (from its baseline)."""

    model_ref: str
    variant: str
    sha256: str
    bins: tuple[int, ...]  # counts per feature histogram: len(edges) + 1
    labels: tuple[str, ...]
    confidence_bins: int
    latency_bins: int = len(LATENCY_EDGES_MS) + 1

    @property
    def classes(self) -> int:
        return max(1, len(self.labels))


def shape_of(model_ref: str, variant: str, sha256: str, meta: dict[str, Any]) -> Shape:
    """The :class:`Shape` of a variant from its registry ``meta`` (baseline and labels)."""
    base = meta.get("baseline") or {}
    outputs = base.get("outputs") or {}
    labels = outputs.get("labels") or meta.get("labels") or []
    return Shape(
        model_ref=model_ref,
        variant=variant,
        sha256=sha256,
        bins=tuple(len(f["edges"]) + 1 for f in base.get("features", [])),
        labels=tuple(str(x) for x in labels),
        confidence_bins=len(outputs.get("confidence_edges") or CONFIDENCE_EDGES) + 1,
    )


def check_window(stats: dict[str, Any], shape: Shape) -> None:
    """Raise ``wrong_bins`` unless every histogram has the variant's number of bins."""
    feats = stats["features"]
    if (  # the usual case first, in one expression
        len(stats["class_counts"]) == shape.classes
        and len(stats["confidence_counts"]) == shape.confidence_bins
        and len(stats["latency_counts"]) == shape.latency_bins
        and tuple(map(len, feats)) == shape.bins
    ):
        return
    if tuple(map(len, feats)) != shape.bins:
        if len(feats) != len(shape.bins):
            raise Rejected(
                "wrong_bins", f"{len(feats)} feature histograms, the model has {len(shape.bins)}"
            )
        j = next(j for j, (h, n) in enumerate(zip(feats, shape.bins)) if len(h) != n)  # noqa: B905
        raise Rejected(
            "wrong_bins", f"feature {j} has {len(feats[j])} counts, expected {shape.bins[j]}"
        )
    for key, n in (
        ("class_counts", shape.classes),
        ("confidence_counts", shape.confidence_bins),
        ("latency_counts", shape.latency_bins),
    ):
        if len(stats[key]) != n:
            raise Rejected("wrong_bins", f"{key} has {len(stats[key])} counts, expected {n}")


def check_sample(sample: dict[str, Any], shape: Shape) -> None:
    """Raise ``wrong_shape`` unless the sample's features, outputs and label fit the variant."""
    if shape.bins and sample["features"] and len(sample["features"]) != len(shape.bins):
        raise Rejected(
            "wrong_shape", f"{len(sample['features'])} features, the model has {len(shape.bins)}"
        )
    if shape.labels and sample["outputs"] and len(sample["outputs"]) not in (1, shape.classes):
        raise Rejected(
            "wrong_shape", f"{len(sample['outputs'])} outputs for {shape.classes} classes"
        )
    if shape.labels and sample["predicted"] not in shape.labels:
        raise Rejected("wrong_shape", f"predicted {sample['predicted'][:40]!r} is not a label")
