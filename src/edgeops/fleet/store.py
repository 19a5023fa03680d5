"""The fleet registry, fed by the devices' state and event messages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from edgeops_protocol.messages import parse_state
from edgeops_protocol.topics import ProtocolError, device_filter, parse_device_topic, validate_id

from ..errors import InvalidInput, NotFound
from ..store import Database
from ..store.schema import Desired, Device, DeviceEvent, FleetSeq
from .selector import Selector

__all__ = ["FleetStore", "all_tags", "device_summary", "record_event"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class FleetStore:
    def __init__(self, db: Database, fleet: str) -> None:
        self.db = db
        self.fleet = validate_id(fleet, "fleet")

    # --- ingest -------------------------------------------------------------------
    def apply_state(self, state: dict[str, Any]) -> None:
        """Record a parsed state message. An offline state keeps what the device last said."""
        self.apply_batch(states=[state])

    def apply_event(self, event: dict[str, Any]) -> bool:
        """Record a parsed event once; False if it was already recorded (see record_event)."""
        return self.apply_batch(events=[event])[0]

    def apply_batch(
        self, states: Sequence[dict[str, Any]] = (), events: Sequence[dict[str, Any]] = ()
    ) -> list[bool]:
        """Record states, then events, in one transaction; for each event whether it was new."""

        def write(s: Session) -> list[bool]:
            for state in states:
                dev = self._find(s, state["device"])
                if dev is None:
                    dev = Device(fleet=self.fleet, device_id=state["device"], state={}, tags=[])
                    s.add(dev)
                dev.online = state["online"]
                dev.last_seen = _now()
                if state["online"]:
                    dev.state = {k: v for k, v in state.items() if k not in ("fleet",)}
                    _raise_seq_floor(s, self.fleet, int(state.get("accepted_seq") or 0))
                    dev.reported_tags = list(state.get("tags", []))
                s.flush()
            return [record_event(s, self.fleet, ev) for ev in events]

        if not states and not events:
            return []
        return self.db.write(write)

    def sync(self, client: Any, quiet: float = 0.3) -> int:
        """Read every retained device state from the broker into the registry; the count."""
        n = 0
        for msg in client.retained(device_filter(self.fleet, "state"), quiet=quiet):
            try:
                fleet, device, _ = parse_device_topic(msg.topic)
                state = parse_state(msg.payload)
            except ProtocolError:
                continue
            if fleet != self.fleet or state["device"] != device:
                continue  # a device may only speak for itself
            self.apply_state(state)
            n += 1
        return n

    # --- reading ------------------------------------------------------------------
    def _find(self, s: Session, device: str) -> Device | None:
        q = select(Device).where(Device.fleet == self.fleet, Device.device_id == device)
        return s.execute(q).scalar_one_or_none()

    def get(self, device: str) -> Device:
        with self.db.session() as s:
            dev = self._find(s, device)
            if dev is None:
                raise NotFound(
                    f"no device {device!r} in fleet {self.fleet}; see `edgeops fleet list`"
                )
            return dev

    def devices(self, selector: str | None = None) -> list[Device]:
        sel = Selector.parse(selector) if selector else None
        with self.db.session() as s:
            q = select(Device).where(Device.fleet == self.fleet).order_by(Device.device_id)
            rows = list(s.execute(q).scalars())
        return [d for d in rows if sel is None or sel.matches(d.device_id, all_tags(d))]

    def events(
        self, device: str | None = None, rollout: str | None = None, limit: int = 100
    ) -> list[DeviceEvent]:
        with self.db.session() as s:
            q = select(DeviceEvent).where(DeviceEvent.fleet == self.fleet)
            if device:
                q = q.where(DeviceEvent.device_id == device)
            if rollout:
                q = q.where(DeviceEvent.rollout_id == rollout)
            return list(s.execute(q.order_by(DeviceEvent.id.desc()).limit(limit)).scalars())

    def tag(self, device: str, tags: list[str], remove: bool = False) -> list[str]:
        for t in tags:
            try:
                validate_id(t, "tag")
            except ProtocolError as exc:
                raise InvalidInput(str(exc)) from exc

        def write(s: Session) -> list[str]:
            dev = self._find(s, device)
            if dev is None:
                raise NotFound(f"no device {device!r} in fleet {self.fleet}")
            current = (
                [t for t in dev.tags if t not in tags]
                if remove
                else sorted(set(dev.tags) | set(tags))
            )
            dev.tags = current
            return sorted(set(current) | set(dev.reported_tags))

        return self.db.write(write)

    # --- deployments ----------------------------------------------------------------
    def next_seq(self) -> int:
        """The next deployment sequence number of the fleet (never reused)."""

        def write(s: Session) -> int:
            row = s.execute(
                select(FleetSeq).where(FleetSeq.fleet == self.fleet).with_for_update()
            ).scalar_one_or_none()
            if row is None:
                row = FleetSeq(fleet=self.fleet, last_seq=0)
                s.add(row)
            row.last_seq += 1  # apply_state keeps it above what any device accepted
            return row.last_seq

        return self.db.write(write)

    def save_desired(
        self,
        device: str,
        seq: int,
        rollout_id: str | None,
        model_ref: str,
        variant: str,
        sha256: str,
        envelope: dict,
        expires_at: float,
    ) -> None:
        self.save_desired_many(
            [
                {
                    "device": device,
                    "seq": seq,
                    "rollout": rollout_id,
                    "model_ref": model_ref,
                    "variant": variant,
                    "sha256": sha256,
                    "envelope": envelope,
                    "expires_at": expires_at,
                }
            ]
        )

    def save_desired_many(self, items: list[dict[str, Any]]) -> None:
        """Record published desired states (keys as :meth:`save_desired`'s) in one transaction."""

        def write(s: Session) -> None:
            for it in items:
                row = s.get(Desired, (self.fleet, it["device"]))
                if row is None:
                    row = Desired(fleet=self.fleet, device_id=it["device"])
                    s.add(row)
                row.seq, row.rollout_id = it["seq"], it["rollout"]
                row.model_ref, row.variant, row.sha256 = (
                    it["model_ref"],
                    it["variant"],
                    it["sha256"],
                )
                row.envelope, row.expires_at = it["envelope"], it["expires_at"]
                row.updated_at = _now()

        self.db.write(write)

    def desired(self) -> list[Desired]:
        with self.db.session() as s:
            q = select(Desired).where(Desired.fleet == self.fleet).order_by(Desired.device_id)
            return list(s.execute(q).scalars())


def all_tags(dev: Device) -> set[str]:
    return set(dev.tags) | set(dev.reported_tags)


def device_summary(d: Device) -> dict[str, Any]:
    """A device as the CLI and the API show it."""
    st = d.state or {}
    model = st.get("model") or {}
    return {
        "device": d.device_id,
        "online": d.online,
        "model": model.get("name"),
        "version": model.get("version"),
        "variant": model.get("variant"),
        "seq": model.get("seq"),
        "runtimes": st.get("runtimes", []),
        "hardware": st.get("hardware"),
        "last_seen": d.last_seen,
        "tags": sorted(all_tags(d)),
        "accepted_seq": st.get("accepted_seq"),
        "previous": st.get("previous"),
        "agent": st.get("agent"),
        # what a microcontroller offers its firmware (optional; rollouts check footprints)
        "flash_bytes": st.get("flash_bytes"),
        "ram_bytes": st.get("ram_bytes"),
    }


def _raise_seq_floor(s: Session, fleet: str, accepted: int) -> None:
    """Keep the fleet's sequence above every seq a device accepted, so a server restored
    from an old backup never issues numbers devices would reject as replays."""
    if accepted <= 0:
        return
    row = s.get(FleetSeq, fleet)
    if row is None:
        s.add(FleetSeq(fleet=fleet, last_seq=accepted))
    elif row.last_seq < accepted:
        row.last_seq = accepted


def record_event(s: Session, fleet: str, event: dict[str, Any]) -> bool:
    """Add a device event in the caller's transaction unless the same one (device, seq,
    kind, device time) is stored: both the collector and the rollout controller record
    the events they receive, and QoS 1 may deliver one twice. True if it was new."""
    if s.get_bind().dialect.name == "postgresql":  # SQLite: BEGIN IMMEDIATE serializes
        key = f"edgeops-event/{fleet}/{event['device']}"
        s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})
    same = select(DeviceEvent.id).where(
        DeviceEvent.fleet == fleet,
        DeviceEvent.device_id == event["device"],
        DeviceEvent.seq == event["seq"],
        DeviceEvent.event == event["event"],
        DeviceEvent.device_ts == event["ts"],
    )
    if s.execute(same.limit(1)).first() is not None:
        return False
    s.add(
        DeviceEvent(
            fleet=fleet,
            device_id=event["device"],
            seq=event["seq"],
            rollout_id=event.get("rollout"),
            event=event["event"],
            reason=event.get("reason", ""),
            progress=event.get("progress"),
            device_ts=event["ts"],
        )
    )
    dev = s.execute(
        select(Device).where(Device.fleet == fleet, Device.device_id == event["device"])
    ).scalar_one_or_none()
    if dev is not None:
        dev.last_seen = _now()
    s.flush()  # a second copy in the same transaction must see this one
    return True
