"""Storing what devices send: a batch of MQTT messages in, rows and counters out.

Pure of MQTT: :meth:`Ingestor.ingest` takes ``(topic, payload)`` pairs, so the
collector, the tests and the benchmark feed it the same way. A batch is
validated (:mod:`.validate`), checked against the fleet registry (the device
must have published a state) and the model registry (the window's variant must
exist with that SHA-256, and its histograms must have the baseline's bins), and
written in **one transaction** (device states go first, each in its own through
``FleetStore.apply_state``, so a new device's data in the same batch is known):

* deployment events once each (``record_event``: the rollout
  controller records the events it reads too, and neither duplicates the other);
* samples, inserted once per ``sample_id``; labels attached to stored samples;
* telemetry windows, inserted once per ``(device, boot, seq)`` with
  ``INSERT … ON CONFLICT DO NOTHING``, so a redelivered or replayed
  window — in the same batch, already stored, or inserted by another collector
  a moment ago — is counted as ``duplicate`` and changes nothing;
* a window more than ``reorder_window`` sequence numbers below the newest one
  of its boot is rejected as ``out_of_order`` (docs/protocol.md, "Telemetry");
* one increment per rejection reason in ``ingest_counters``.

Rejected messages are logged (at most one line per reason every 10 s) and
never touch stored rows. Lookups are cached in bounded LRU maps: known devices
and variant shapes (unknown ones for a few seconds only, so a device or model
registered a moment later is accepted soon), and each boot's newest sequence
number.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, Float, Text, bindparam, cast, func, select
from sqlalchemy.orm import Session

from edgeops_protocol.messages import parse_event, parse_state
from edgeops_protocol.topics import ProtocolError, parse_device_topic

from ..fleet.store import FleetStore, record_event
from ..store import Database
from ..store.schema import (
    Device,
    IngestCounter,
    Model,
    ModelVersion,
    Sample,
    TelemetryWindow,
    Variant,
)
from .store import set_label
from .validate import (
    MAX_BYTES,
    Rejected,
    Shape,
    WindowBatch,
    check_sample,
    check_window,
    dumps,
    parse_label,
    parse_sample,
    parse_telemetry,
    shape_of,
)

__all__ = ["REORDER_WINDOW", "IngestResult", "Ingestor", "Prepared"]

log = logging.getLogger("edgeops.collector")

REORDER_WINDOW = 100_000  # windows; far more than an outbox holds (docs/protocol.md)
_NEGATIVE_TTL = 5.0  # seconds an unknown device or model stays cached as unknown
_PARSERS = {"samples": parse_sample, "labels": parse_label}
_NAMED_PARAM = re.compile(r"%\((\w+)\)s")  # psycopg's named parameters, in compiled SQL
# the columns of a stored window and sample, in the order their rows are built
_WINDOW_COLS = (
    "device_id", "boot", "seq", "model_ref", "variant", "sha256", "start", "end", "count", "stats",
)  # fmt: skip
_SAMPLE_COLS = (
    "device_id", "sample_id", "model_ref", "variant", "ts", "input", "features", "outputs",
    "predicted",
)  # fmt: skip


@dataclass
class _Insert:
    """A compiled ``INSERT … ON CONFLICT DO NOTHING`` of one table's columns."""

    sql: str  # one row, positional parameters
    pick: Callable[[tuple], tuple] | None  # row (cols, then const) -> parameters' order
    procs: dict[str, Callable[[Any], Any]]  # bind processors, by column
    adapt: Callable[[Any], Any]  # a shared value as the driver would send it


def _same(value: Any) -> Any:
    return value


def _sqlite_adapter(value: Any) -> Any:
    """What :mod:`sqlite3` would store for ``value``, computed once for a batch's shared
    value (e.g. a ``datetime``: its registered adapter) rather than once per row."""
    adapt = sqlite3.adapters.get((type(value), sqlite3.PrepareProtocol))
    return adapt(value) if adapt is not None else value


def _apply(row: tuple, idx: list[tuple[int, Callable[[Any], Any]]]) -> list[Any]:
    out = list(row)
    for i, proc in idx:
        out[i] = proc(out[i])
    return out


class _LRU:
    """A bounded map that forgets the least recently used entry."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        value = self._d.get(key)
        if value is not None:
            self._d.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def pop(self, key: Any) -> None:
        self._d.pop(key, None)


@dataclass
class IngestResult:
    """What one batch did: accepted messages by kind, rejected ones by reason."""

    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    # devices not in the fleet registry (yet): their messages may be sent again later
    unknown_devices: set[str] = field(default_factory=set)


@dataclass
class Prepared:
    """A parsed, validated batch waiting for :meth:`Ingestor.store`."""

    parsed: dict[str, list[tuple[str, dict[str, Any]]]] = field(
        default_factory=lambda: {
            k: [] for k in ("state", "events", "samples", "labels", "telemetry")
        }
    )
    rejected: IngestResult = field(default_factory=IngestResult)


class _Limiter:
    """Logs a rejection reason at most once per ``every`` seconds, with the count skipped."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self.clock = every, clock
        self._last: dict[str, float] = {}
        self._skipped: Counter[str] = Counter()

    def note(self, reason: str, topic: str, detail: str) -> None:
        now = self.clock()
        if now - self._last.get(reason, -1e18) < self.every:
            self._skipped[reason] += 1
            return
        more = self._skipped.pop(reason, 0)
        self._last[reason] = now
        log.warning(
            "rejected (%s) on %s: %s%s",
            reason,
            topic,
            detail,
            f" (and {more} more since the last report)" if more else "",
        )


class Ingestor:
    def __init__(
        self,
        db: Database,
        fleet: str,
        *,
        reorder_window: int = REORDER_WINDOW,
        cache_size: int = 4096,
        max_bytes: dict[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.fleets = FleetStore(db, fleet)
        self.fleet = self.fleets.fleet
        self.reorder_window = reorder_window
        self.max_bytes = {**MAX_BYTES, **(max_bytes or {})}
        self.clock = clock
        self._devices = _LRU(cache_size * 16)  # device id -> True, or expiry time if unknown
        self._shapes = _LRU(cache_size)  # (name, version, variant) -> Shape or expiry time
        self._newest = _LRU(cache_size * 16)  # (device, boot) -> newest stored seq
        self._topics: dict[str, tuple[str, str, str]] = {}  # topic -> its parts, if valid
        self._topics_max = cache_size * 16  # (a pure function: emptied when full)
        self._inserts: dict[tuple, _Insert] = {}  # compiled INSERTs (see _insert_new)
        self._log = _Limiter(clock=clock)

    # --- the batch -------------------------------------------------------------------
    def ingest(self, messages: Iterable[tuple[str, bytes]]) -> IngestResult:
        """Validate and store a batch in one transaction; what was accepted and rejected."""
        return self.store(self.prepare(messages))

    def prepare(self, messages: Iterable[tuple[str, bytes]]) -> Prepared:
        """The pure half of :meth:`ingest`: parse and validate, no database. The collector
        prepares the next batch while the previous one is being written."""
        batch = Prepared()
        windows = WindowBatch()  # adds up every window's feature histograms at once
        telemetry: list[tuple[str, bytes, dict[str, Any] | Rejected, int | None]] = []
        for topic, payload in messages:
            try:
                kind, msg, ticket = self._parse(topic, payload, windows)
            except Rejected as exc:
                self._reject(batch.rejected, topic, exc)
                continue
            if kind == "telemetry":
                telemetry.append((topic, payload, msg, ticket))
            elif kind is not None:
                batch.parsed[kind].append((topic, msg))  # type: ignore[arg-type]
        failed = windows.failed()
        for topic, payload, msg, ticket in telemetry:  # in arrival order
            if ticket in failed:  # parsed again alone, its verdict is the parser's
                try:
                    msg = self._parse(topic, payload)[1]
                except Rejected as exc:
                    msg = exc
            if isinstance(msg, Rejected):
                self._reject(batch.rejected, topic, msg)
            else:
                batch.parsed["telemetry"].append((topic, msg))
        return batch

    def store(self, batch: Prepared) -> IngestResult:
        """The database half of :meth:`ingest`: registry checks, rows and counters."""
        res = IngestResult(rejected=Counter(batch.rejected.rejected))
        parsed = batch.parsed
        for _, state in parsed["state"]:  # first, so a new device's data in the batch counts
            self.fleets.apply_state(state)
            res.accepted["state"] += 1
            self._devices.put(state["device"], True)

        def write(s: Session) -> tuple[IngestResult, dict[tuple[str, str], int]]:
            r = IngestResult(accepted=Counter(res.accepted), rejected=Counter(res.rejected))
            known = self._known_devices(s, {m["device"] for k in parsed for _, m in parsed[k]})
            items = {
                k: self._check_device(r, parsed[k], known)
                for k in ("events", "samples", "labels", "telemetry")
            }
            self._store_events(s, r, items["events"])
            self._store_samples(s, r, items["samples"])
            self._store_labels(s, r, items["labels"])
            newest = self._store_windows(s, r, items["telemetry"])
            self._count(s, r.rejected)
            return r, newest

        out, newest = self.db.write(write)
        for key, seq in newest.items():  # only after the commit
            self._newest.put(key, max(seq, self._newest.get(key) or 0))
        return out

    def count_rejected(self, reason: str, n: int = 1) -> None:
        """Count messages dropped outside :meth:`ingest` (e.g. one that made it fail)."""
        self.db.write(lambda s: self._count(s, Counter({reason: n})))

    def _parse(
        self, topic: str, payload: bytes, windows: WindowBatch | None = None
    ) -> tuple[str | None, dict[str, Any] | Rejected, int | None]:
        """``(kind, message, ticket)``, or Rejected raised. A window given a ticket by
        ``windows`` is not fully checked yet: if its topic does not match, the rejection
        is returned rather than raised, since a failed check of the batch comes first."""
        parts = self._topics.get(topic)
        if parts is None:
            try:
                parts = parse_device_topic(topic)
            except ProtocolError as exc:
                raise Rejected("malformed", f"bad topic: {exc}") from exc
            if len(self._topics) >= self._topics_max:
                self._topics.clear()
            self._topics[topic] = parts
        fleet, device, kind = parts
        if fleet != self.fleet:
            raise Rejected("wrong_device_topic", f"fleet {fleet!r} is not {self.fleet!r}")
        if kind == "desired":
            return None, {}, None
        limit = self.max_bytes[kind]
        if len(payload) > limit:
            raise Rejected("oversized", f"{len(payload)} bytes, over the {limit}-byte limit")
        ticket = None
        if kind == "telemetry":
            msg = parse_telemetry(payload, limit, windows)
            ticket = msg.pop("_ticket", None)
        elif kind in _PARSERS:
            msg = _PARSERS[kind](payload, limit)
        else:
            try:
                msg = (parse_state if kind == "state" else parse_event)(payload, limit)
            except ProtocolError as exc:
                raise Rejected("malformed", str(exc)) from exc
        if msg["fleet"] != fleet or msg["device"] != device:
            exc = Rejected(
                "wrong_device_topic", f"payload speaks for {msg['fleet']}/{msg['device']}"
            )
            if ticket is None:
                raise exc
            return kind, exc, ticket
        return kind, msg, ticket

    def _reject(self, res: IngestResult, topic: str, exc: Rejected) -> None:
        res.rejected[exc.reason] += 1
        self._log.note(exc.reason, topic, exc.detail)

    def _check_device(
        self, res: IngestResult, items: list[tuple[str, dict[str, Any]]], known: set[str]
    ) -> list[tuple[str, dict[str, Any]]]:
        ok = []
        for topic, m in items:
            if m["device"] in known:
                ok.append((topic, m))
            else:
                res.unknown_devices.add(m["device"])
                self._reject(res, topic, Rejected("unknown_device", f"{m['device']!r}"))
        return ok

    # --- registry lookups (cached) -----------------------------------------------------
    def _known_devices(self, s: Session, ids: set[str]) -> set[str]:
        now = self.clock()
        known, ask = set(), []
        for d in ids:
            hit = self._devices.get(d)
            if hit is True:
                known.add(d)
            elif hit is None or hit <= now:
                ask.append(d)
        for i in range(0, len(ask), 500):
            q = select(Device.device_id).where(
                Device.fleet == self.fleet, Device.device_id.in_(ask[i : i + 500])
            )
            found = set(s.execute(q).scalars())
            known |= found
            for d in ask[i : i + 500]:
                self._devices.put(d, True if d in found else now + _NEGATIVE_TTL)
        return known

    def _shape(self, s: Session, model: dict[str, Any]) -> Shape | None:
        key = (model["name"], model["version"], model["variant"])
        hit = self._shapes.get(key)
        if isinstance(hit, Shape):
            return hit
        if hit is not None and hit > self.clock():
            return None
        q = (
            select(Variant)
            .join(ModelVersion, Variant.version_id == ModelVersion.id)
            .join(Model, ModelVersion.model_id == Model.id)
            .where(Model.name == key[0], ModelVersion.version == key[1], Variant.name == key[2])
        )
        v = s.execute(q).scalar_one_or_none()
        if v is None:
            self._shapes.put(key, self.clock() + _NEGATIVE_TTL)
            return None
        shape = shape_of(f"{key[0]}@{key[1]}", v.name, v.sha256, v.meta or {})
        self._shapes.put(key, shape)
        return shape

    def _model_shape(self, s: Session, m: dict[str, Any]) -> Shape:
        shape = self._shape(s, m["model"])
        ref = f"{m['model']['name']}@{m['model']['version']} {m['model']['variant']}"
        if shape is None:
            raise Rejected("unknown_model", f"{ref} is not in the registry")
        if shape.sha256 != m["model"]["sha256"]:
            raise Rejected("unknown_model", f"{ref} has another SHA-256 in the registry")
        return shape

    def _newest_seq(self, s: Session, device: str, boot: str) -> int:
        hit = self._newest.get((device, boot))
        if hit is not None:
            return hit
        q = select(func.max(TelemetryWindow.seq)).where(
            TelemetryWindow.fleet == self.fleet,
            TelemetryWindow.device_id == device,
            TelemetryWindow.boot == boot,
        )
        return int(s.execute(q).scalar_one_or_none() or 0)

    # --- writers ---------------------------------------------------------------------
    def _insert_new(
        self,
        s: Session,
        table: Any,
        const: dict[str, Any],
        cols: tuple[str, ...],
        rows: list[tuple],
        keys: tuple[str, ...],
        json_cols: tuple[str, ...] = (),
    ) -> int:
        """Insert the rows whose unique ``keys`` are not stored yet; how many were new.

        ``rows`` hold the values of ``cols`` in that order (``json_cols`` serialized
        already, by :func:`dumps`); ``const`` the values every row shares (fleet, time).
        One ``INSERT … ON CONFLICT DO NOTHING`` run by the driver's ``executemany``:
        compiled once per table (cached), bind processors applied once to the shared
        values, and rows handed to the driver as they are, since SQLAlchemy's per-row
        processing would take longer than the insert itself."""
        if not rows:
            return 0
        conn = s.connection()
        ins = self._insert_stmt(conn, table, const, cols, keys, json_cols)
        procs = ins.procs
        shared = []
        for c, v in const.items():
            proc = procs.get(c)
            v = proc(v) if proc is not None else v
            shared.append(ins.adapt(v))
        if any(c in procs for c in cols):  # none for the tables here (see _insert_stmt)
            idx = [(i, procs[c]) for i, c in enumerate(cols) if c in procs]
            rows = [tuple(_apply(r, idx)) for r in rows]
        tail, pick = tuple(shared), ins.pick
        params = [r + tail for r in rows] if pick is None else [pick(r + tail) for r in rows]
        return max(0, conn.exec_driver_sql(ins.sql, params).rowcount)

    def _insert_stmt(
        self,
        conn: Any,
        table: Any,
        const: dict[str, Any],
        cols: tuple[str, ...],
        keys: tuple[str, ...],
        json_cols: tuple[str, ...],
    ) -> _Insert:
        """The INSERT for these columns, compiled once per dialect and table."""
        dialect = conn.dialect
        ck = (dialect.name, table.name, tuple(const), cols, keys, json_cols)
        hit = self._inserts.get(ck)
        if hit is not None:
            return hit
        pg = dialect.name == "postgresql"
        if pg:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        names = (*cols, *const)
        values: dict[str, Any] = {}
        for c in json_cols:
            param = bindparam(c, type_=Text)
            values[c] = cast(param, JSON) if pg else param
        for c in names:
            values.setdefault(c, bindparam(c, type_=table.c[c].type))
        stmt = insert(table).values(values).inline()  # inline: no RETURNING of new ids
        stmt = stmt.on_conflict_do_nothing(index_elements=[table.c[k] for k in keys])
        compiled = stmt.compile(dialect=dialect)
        procs = {}
        for c in names:
            if c in json_cols or isinstance(table.c[c].type, Float):  # floats already: parsed
                continue
            proc = table.c[c].type.bind_processor(dialect)
            if proc is not None:
                procs[c] = proc
        sql, order = compiled.string, compiled.positiontup
        ins = _Insert(sql, None, procs, _same)
        if pg:  # named %(x)s parameters to positional %s ones: rows go as tuples
            order = _NAMED_PARAM.findall(sql)
            ins.sql = _NAMED_PARAM.sub("%s", sql)
        else:
            ins.adapt = _sqlite_adapter
        if order is None or sorted(order) != sorted(names):
            raise AssertionError(f"unexpected INSERT parameters {order} for {names}")
        if tuple(order) != names:
            index = [names.index(c) for c in order]
            ins.pick = itemgetter(*index) if len(index) > 1 else (lambda r: (r[index[0]],))
        self._inserts[ck] = ins
        return ins

    def _store_events(self, s: Session, res: IngestResult, items: list) -> None:
        """Deployment events, once each (the rollout controller records them too)."""
        for topic, ev in items:
            if record_event(s, self.fleet, ev):
                res.accepted["events"] += 1
            else:
                self._reject(res, topic, Rejected("duplicate", f"event seq {ev['seq']}"))

    def _store_samples(self, s: Session, res: IngestResult, items: list) -> None:
        rows, topics = [], {}
        for topic, m in items:
            try:
                shape = self._model_shape(s, m)
                check_sample(m, shape)
            except Rejected as exc:
                self._reject(res, topic, exc)
                continue
            if m["sample_id"] in topics:
                self._reject(res, topic, Rejected("duplicate", f"sample {m['sample_id']}"))
                continue
            topics[m["sample_id"]] = topic
            raw = m["input"]
            rows.append(
                (
                    m["device"],
                    m["sample_id"],
                    shape.model_ref,
                    shape.variant,
                    m["ts"],
                    "null" if raw is None else dumps(raw),
                    dumps(m["features"]),
                    dumps(m["outputs"]),
                    m["predicted"],
                )
            )
        const = {"fleet": self.fleet, "received_at": datetime.now(timezone.utc)}
        new = self._insert_new(
            s, Sample.__table__, const, _SAMPLE_COLS, rows, ("fleet", "sample_id"),
            ("input", "features", "outputs"),
        )  # fmt: skip
        self._accept(res, "samples", new, len(rows), next(iter(topics.values()), ""))

    def _store_labels(self, s: Session, res: IngestResult, items: list) -> None:
        for topic, m in items:
            status = set_label(s, self.fleet, m["sample_id"], m["label"], m["device"])
            if status in ("added", "changed"):
                res.accepted["labels"] += 1
                continue
            reason = {
                "unchanged": "duplicate",
                "unknown_sample": "unknown_sample",
                "wrong_device": "wrong_device_topic",
            }[status]
            self._reject(res, topic, Rejected(reason, f"label for {m['sample_id']}"))

    def _store_windows(
        self, s: Session, res: IngestResult, items: list
    ) -> dict[tuple[str, str], int]:
        """In arrival order, as if one at a time: a window of a known model whose histograms
        fit it, seen first in the batch, and not too far behind the newest seq of its boot
        so far (``newest``, returned: the caller caches it once committed)."""
        seen: set[tuple[str, str, int]] = set()
        shapes: dict[tuple, Shape | Rejected] = {}  # per model reference, for this batch
        newest: dict[tuple[str, str], int] = {}
        rows, first = [], ""
        for topic, m in items:
            ref = m["model"]
            mkey = (ref["name"], ref["version"], ref["variant"], ref["sha256"])
            shape = shapes.get(mkey)
            if shape is None:
                try:
                    shape = self._model_shape(s, m)
                except Rejected as exc:
                    shape = exc
                shapes[mkey] = shape
            if type(shape) is Rejected:
                self._reject(res, topic, shape)
                continue
            st = m["stats"]
            try:
                check_window(st, shape)
            except Rejected as exc:
                self._reject(res, topic, exc)
                continue
            device, boot, seq = key = (m["device"], m["boot"], m["seq"])
            if key in seen:
                self._reject(res, topic, Rejected("duplicate", f"window {key}"))
                continue
            seen.add(key)
            b = (device, boot)
            top = newest.get(b)
            if top is None:
                top = newest[b] = self._newest_seq(s, device, boot)
            if seq < top - self.reorder_window:
                self._reject(res, topic, self._too_old(s, device, boot, seq, top))
                continue
            if seq > top:
                newest[b] = seq
            first = first or topic
            rows.append(
                (
                    device,
                    boot,
                    seq,
                    shape.model_ref,
                    shape.variant,
                    shape.sha256,
                    m["start"],
                    m["end"],
                    st["count"],
                    dumps(st),
                )
            )
        const = {"fleet": self.fleet, "received_at": datetime.now(timezone.utc)}
        keys = ("fleet", "device_id", "boot", "seq")
        new = self._insert_new(
            s, TelemetryWindow.__table__, const, _WINDOW_COLS, rows, keys, ("stats",)
        )
        self._accept(res, "telemetry", new, len(rows), first)
        return newest

    def _too_old(self, s: Session, device: str, boot: str, seq: int, newest: int) -> Rejected:
        """``duplicate`` if that very window is stored (a replay), else ``out_of_order``."""
        q = select(TelemetryWindow.id).where(
            TelemetryWindow.fleet == self.fleet,
            TelemetryWindow.device_id == device,
            TelemetryWindow.boot == boot,
            TelemetryWindow.seq == seq,
        )
        if s.execute(q.limit(1)).first() is not None:
            return Rejected("duplicate", f"window {(device, boot, seq)} is stored")
        return Rejected(
            "out_of_order",
            f"seq {seq} of boot {boot} is more than {self.reorder_window} behind {newest}",
        )

    def _accept(self, res: IngestResult, kind: str, new: int, tried: int, topic: str) -> None:
        """Count the rows inserted; the others were stored before (or by another collector
        a moment ago): redelivered or replayed, so duplicates."""
        if new:
            res.accepted[kind] += new
        if tried > new:
            res.rejected["duplicate"] += tried - new - 1
            what = "window" if kind == "telemetry" else "sample"
            self._reject(
                res,
                topic,
                Rejected("duplicate", f"{tried - new} of {tried} {what}s already stored"),
            )

    def _count(self, s: Session, rejected: Counter[str]) -> None:
        if not rejected:
            return
        if s.get_bind().dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        t = IngestCounter.__table__
        for reason, n in sorted(rejected.items()):  # sorted: same lock order in every process
            stmt = insert(t).values(fleet=self.fleet, reason=reason, count=n)
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=[t.c.fleet, t.c.reason], set_={"count": t.c.count + n}
                )
            )
