"""The rollout controller: the adapter between the pure engine, the database and MQTT.

It turns engine commands into signed manifests published over MQTT, device
messages into engine events and fleet records, and persists each rollout's
engine state after every step, so a restarted controller resumes where the
last one stopped. A rollout is driven by one controller at a time: the one
holding its lease (renewed every tick, taken over when it lapses).

Manifests are signed by a ``signer(device, manifest) -> envelope``. The default
(:class:`edgeops.firmware.signing.FleetSigner`) signs with HMAC-SHA256 for a
device that has a key in ``<keys_dir>/devices/`` (microcontroller firmware) and
with the fleet's Ed25519 key otherwise, when publishing and when re-signing
before expiry alike.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeops_protocol.chunks import describe_chunks
from edgeops_protocol.messages import parse_event, parse_state
from edgeops_protocol.topics import ProtocolError, device_filter, device_topic, parse_device_topic

from .. import audit
from ..errors import Conflict, InvalidInput, NotFound
from ..monitoring.gates import GateVerdict, QualityGates
from ..rollout import (
    Abort,
    Deploy,
    Deployed,
    DeviceReport,
    Notify,
    Pause,
    Resume,
    Revert,
    Rollback,
    RolloutPlan,
    RolloutState,
    SoakVerdict,
    Start,
    Tick,
    step,
    summary,
)
from ..store.schema import Rollout
from .deploy import (
    ManifestOptions,
    build_manifest,
    choose_fitting_variant,
    publish_artifact,
)
from .keys import SigningKey
from .store import FleetStore

__all__ = ["LEASE_SECONDS", "TERMINAL", "RolloutController", "RolloutOptions", "Signer"]

# signer(device, manifest) -> the signed envelope published on the device's desired topic
Signer = Callable[[str, dict[str, Any]], dict[str, Any]]

log = logging.getLogger("edgeops.rollout")
LEASE_SECONDS = float(os.environ.get("EDGEOPS_ROLLOUT_LEASE_S", "15"))
TERMINAL = ("completed", "aborted", "rolled_back")
GATE_CHECK_S = 1.0  # seconds between quality-gate checks of a soaking rollout
_REQUESTS = {"pause": Pause, "resume": Resume, "abort": Abort, "rollback": Rollback}


@dataclass(frozen=True)
class RolloutOptions:
    stages: tuple[float, ...] = (0.05, 0.25, 1.0)
    max_failures: float = 0.1
    stage_wait: float = 0.0
    timeout: float = 600.0
    retries: int = 2
    variant: str | None = None
    hardware: tuple[str, ...] = ("*",)
    manifest: ManifestOptions = field(default_factory=ManifestOptions)
    gates: QualityGates = field(default_factory=QualityGates)  # judged while stages soak


class RolloutController:
    def __init__(
        self,
        ws: Any,
        key: SigningKey | None,
        client: Any = None,
        clock: Callable[[], float] = time.time,
        *,
        signer: Signer | None = None,
    ) -> None:
        from ..firmware.signing import FleetSigner  # imports this module: not at the top

        self.ws = ws
        self.key = key
        # default: HMAC for devices with a key in <keys_dir>/devices/, else Ed25519 (key)
        self.signer: Signer = signer or FleetSigner(key, keys_dir=ws.settings.keys_dir)
        self.client = client
        self.clock = clock
        self.fleet = FleetStore(ws.db, ws.settings.fleet)
        self.owner = f"ctl-{uuid.uuid4().hex[:10]}"
        self.notes: list[tuple[str, str, str]] = []  # (rollout, kind, detail)
        self._published: set[str] = set()
        self._models: dict[tuple[str, str, int], tuple[Any, Any, bytes, dict]] = {}
        self._subscribed = False
        self._gate_checked: dict[str, float] = {}  # rollout -> monotonic time of the last check

    # --- creating -------------------------------------------------------------------
    def create(self, model_ref: str, selector: str, opts: RolloutOptions) -> str:
        """Plan a rollout of ``model_ref`` to the devices ``selector`` matches; its id."""
        mv = self.ws.registry.get_version(model_ref)
        devices = self.fleet.devices(selector)
        if not devices:
            raise InvalidInput(
                f"no device in fleet {self.fleet.fleet} matches {selector!r}; "
                "see `edgeops fleet list`"
            )
        targets: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        for dev in devices:
            # the variant it runs best, unless its footprint exceeds the declared flash/RAM
            variant, why = choose_fitting_variant(mv, dev.state or {}, opts.variant)
            if variant is None:
                skipped[dev.device_id] = why
                continue
            targets[dev.device_id] = {
                "variant": variant.name,
                "sha256": variant.sha256,
                "previous": self._previous(dev.state or {}),
            }
        if not targets:
            reasons = "; ".join(f"{d}: {why}" for d, why in sorted(skipped.items())[:3])
            raise InvalidInput(
                f"none of the {len(devices)} devices matching {selector!r} can "
                f"run a variant of {mv.ref} (variants: "
                f"{', '.join(v.name for v in mv.variants)}): {reasons}"
            )
        rid = f"r-{secrets.token_hex(4)}"
        plan = RolloutPlan(
            id=rid,
            devices=tuple(sorted(targets)),
            stages=tuple(opts.stages),
            max_failures=opts.max_failures,
            stage_wait=opts.stage_wait,
            timeout=opts.timeout,
            retries=opts.retries,
            previous={d: t["previous"] is not None for d, t in targets.items()},
            require_soak_verdict=bool(opts.gates),
        )
        state = RolloutState.initial(plan)
        doc = {
            "devices": targets,
            "skipped": skipped,
            "hardware": list(opts.hardware),
            "manifest": {
                "ttl": opts.manifest.ttl,
                "probation_s": opts.manifest.probation_s,
                "max_error_rate": opts.manifest.max_error_rate,
                "latency_budget_ms": opts.manifest.latency_budget_ms,
                "chunk_size": opts.manifest.chunk_size,
                "artifact_url_base": opts.manifest.artifact_url_base,
            },
            "gates": opts.gates.to_dict(),
            "verdicts": [],
        }

        def write(s: Session) -> None:
            s.add(
                Rollout(
                    id=rid,
                    fleet=self.fleet.fleet,
                    model_ref=mv.ref,
                    selector=selector,
                    status=state.status.value,
                    plan=plan.to_dict(),
                    state=state.to_dict(),
                    targets=doc,
                    requests=[{"op": "start"}],
                )
            )
            audit.record(
                s,
                "rollout.create",
                rid,
                {
                    "model": mv.ref,
                    "selector": selector,
                    "devices": len(targets),
                    "stages": plan.stages,
                },
            )

        self.ws.db.write(write)
        return rid

    def _previous(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """The device's current model, if the registry still has its bytes (to revert to)."""
        model = state.get("model")
        if not model:
            return None
        try:
            mv = self.ws.registry.get_version(f"{model['name']}@{model['version']}")
        except (NotFound, InvalidInput):
            return None
        for v in mv.variants:
            if v.sha256 == model.get("sha256"):
                return {"ref": mv.ref, "variant": v.name, "sha256": v.sha256}
        return None

    # --- operator requests -------------------------------------------------------------
    def request(self, rollout_id: str, op: str, reason: str = "") -> None:
        if op not in _REQUESTS:
            raise InvalidInput(f"unknown rollout request {op!r}")

        def write(s: Session) -> None:
            r = s.get(Rollout, rollout_id)
            if r is None:
                raise NotFound(f"no rollout {rollout_id!r}; see `edgeops rollout list`")
            if r.status in TERMINAL and not (op == "rollback" and r.status == "completed"):
                raise Conflict(f"rollout {rollout_id} is {r.status}; nothing to {op}")
            r.requests = [*r.requests, {"op": op, "reason": reason}]
            audit.record(s, f"rollout.{op}", rollout_id, {"reason": reason})

        self.ws.db.write(write)

    # --- driving -------------------------------------------------------------------------
    def _subscribe(self) -> None:
        if self._subscribed or self.client is None:
            return
        self.client.subscribe(device_filter(self.fleet.fleet, "events"))
        self.client.subscribe(device_filter(self.fleet.fleet, "state"))
        self._subscribed = True

    def active(self) -> list[str]:
        with self.ws.db.session() as s:
            q = select(Rollout.id).where(
                Rollout.fleet == self.fleet.fleet, Rollout.status.not_in(TERMINAL)
            )
            return list(s.execute(q).scalars())

    def run(
        self,
        until: Callable[[], bool] | None = None,
        tick: float = 0.25,
        on_step: Callable[[str, dict[str, Any]], None] | None = None,
        max_seconds: float | None = None,
    ) -> None:
        """Drive rollouts until ``until()`` is true (default: none is left to drive)."""
        self._subscribe()
        started = time.monotonic()
        last_resign = 0.0
        while True:
            self._pump(on_step, budget=tick)
            now = self.clock()
            for rid in self.active():
                self._advance(rid, [Tick(), *self._gate_verdicts(rid, now)], now, on_step)
            if now - last_resign > 30:
                self.resign_expiring(now)
                last_resign = now
            if until() if until is not None else not self.active():
                return
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                return

    def _pump(self, on_step: Any, budget: float) -> None:
        """Handle device messages for up to ``budget`` seconds."""
        if self.client is None:
            time.sleep(budget)
            return
        reports: dict[str, list[Any]] = {}
        states: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for msg in self.client.drain(budget):
            try:
                fleet, device, kind = parse_device_topic(msg.topic)
                if kind == "state":
                    state = parse_state(msg.payload)  # flash_bytes / ram_bytes too
                    if state["device"] == device and fleet == self.fleet.fleet:
                        states.append(state)
                elif kind == "events":
                    ev = parse_event(msg.payload)
                    if ev["device"] != device or fleet != self.fleet.fleet:
                        continue  # a device may only speak for itself
                    events.append(ev)
                    if ev.get("rollout"):
                        reports.setdefault(ev["rollout"], []).append(
                            DeviceReport(device, ev["seq"], ev["event"], ev.get("reason", ""))
                        )
            except ProtocolError as exc:
                log.debug("dropped a message on %s: %s", msg.topic, exc)
        self.fleet.apply_batch(states, events)  # one transaction for the whole pump
        now = self.clock()
        for rid, events in reports.items():
            self._advance(rid, events, now, on_step)

    def _advance(self, rid: str, events: list[Any], now: float, on_step: Any) -> None:
        """Feed events to one rollout (if this controller holds its lease) and act."""
        with self.ws.db.session() as s:
            r = s.get(Rollout, rid)
            if r is None or (r.status in TERMINAL and not r.requests):
                return
            if r.lease_owner not in ("", self.owner) and r.lease_until > now:
                return
            plan = RolloutPlan.from_dict(r.plan)
            state = RolloutState.from_dict(r.state)
            targets = r.targets
            model_ref = r.model_ref
            requests = list(r.requests)
        queue: list[Any] = []
        for req in requests:
            if req["op"] == "start":
                queue.append(Start())
            elif req["op"] == "verdict":
                queue.append(SoakVerdict(req["stage"], req["ok"], req.get("reason", "")))
            else:
                cls = _REQUESTS[req["op"]]
                queue.append(
                    cls(req["reason"])
                    if req["op"] in ("abort", "rollback") and req.get("reason")
                    else cls()
                )
        queue.extend(events)
        outbox: list[dict[str, Any]] = []
        while queue:
            event = queue.pop(0)
            state, commands = step(plan, state, event, now)
            for cmd in commands:
                if isinstance(cmd, Notify):
                    self.notes.append((rid, cmd.kind.value, cmd.detail))
                    log.info("%s %s %s", rid, cmd.kind.value, cmd.detail)
                elif isinstance(cmd, (Deploy, Revert)):
                    out = self._deploy(
                        rid, model_ref, cmd.device, targets, revert=isinstance(cmd, Revert)
                    )
                    if out is not None:
                        outbox.append(out)
                        queue.append(Deployed(cmd.device, out["seq"]))
        self._publish_manifests(outbox)

        def write(s: Session) -> None:
            row = s.get(Rollout, rid)
            row.state = state.to_dict()
            row.status = state.status.value
            row.requests = row.requests[len(requests) :]
            row.lease_owner, row.lease_until = self.owner, now + LEASE_SECONDS

        self.ws.db.write(write)
        if on_step is not None:
            on_step(rid, summary(plan, state))

    # --- quality gates -------------------------------------------------------------------
    def _gate_verdicts(self, rid: str, now: float) -> list[SoakVerdict]:
        """A SoakVerdict for a soaking rollout with quality gates, once its telemetry decides.

        Judged (at most every ``GATE_CHECK_S``) on the windows of the rollout's version
        from the activated devices of the stages so far whose ``end`` is in the soak:
        a breach with enough predictions fails at once; a pass is given when the soak's
        time is up; too few predictions by ``soak_until + timeout`` fail it."""
        t = time.monotonic()
        if t - self._gate_checked.get(rid, -1e9) < GATE_CHECK_S:
            return []
        self._gate_checked[rid] = t
        with self.ws.db.session() as s:
            r = s.get(Rollout, rid)
            if r is None or r.status != "soaking" or not r.targets.get("gates", {}).get("gates"):
                return []
            plan = RolloutPlan.from_dict(r.plan)
            state = RolloutState.from_dict(r.state)
            gates = QualityGates.from_dict(r.targets["gates"])
            model_ref = r.model_ref
        if state.soak_until is None or state.verdict_ok:
            return []
        soak_start = state.soak_until - plan.stage_wait
        cohort = {
            d
            for d in plan.devices[: plan.stage_sizes()[state.stage]]
            if state.devices[d].status.value == "activated"
        }
        verdict = self.judge_gates(model_ref, gates, cohort, since=soak_start)
        if verdict.ok is None:
            if now < state.soak_until + plan.timeout:
                return []
            verdict = GateVerdict(
                False,
                verdict.counts,
                verdict.values,
                (
                    f"too little telemetry: {sum(verdict.counts.values())} predictions, "
                    f"{gates.min_count} needed per variant (is `edgeops collector` running?)",
                ),
            )
        elif verdict.ok and now < state.soak_until:
            return []
        self._record_verdict(rid, state.stage, now, verdict)
        return [SoakVerdict(state.stage, bool(verdict.ok), verdict.reason)]

    def judge_gates(
        self, model_ref: str, gates: QualityGates, devices: set[str], since: float | None
    ) -> GateVerdict:
        """The gates on ``devices``' telemetry of ``model_ref`` whose windows end after
        ``since`` (device time)."""
        from ..monitoring.gates import judge
        from ..monitoring.store import MonitoringStore

        mv = self.ws.registry.get_version(model_ref)
        baselines = {v.name: v.meta["baseline"] for v in mv.variants if "baseline" in v.meta}
        windows = MonitoringStore(self.ws.db, self.fleet.fleet).windows(
            mv.ref, since=since, limit=None
        )
        by_variant: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        for w in windows:
            if w.device_id in devices and w.variant in baselines:
                by_variant.setdefault(w.variant, (baselines[w.variant], []))[1].append(w.stats)
        return judge(gates, by_variant)

    def _record_verdict(self, rid: str, stage: int, now: float, verdict: GateVerdict) -> None:
        entry = {"stage": stage, "at": now, **verdict.to_dict()}
        self.notes.append((rid, "gate_verdict", f"stage {stage}: {verdict.reason}"))
        log.info("%s gate verdict for stage %d: %s", rid, stage, verdict.reason)

        def write(s: Session) -> None:
            row = s.get(Rollout, rid)
            row.targets = {**row.targets, "verdicts": [*row.targets.get("verdicts", []), entry]}

        self.ws.db.write(write)

    def _deploy(
        self, rid: str, model_ref: str, device: str, targets: dict[str, Any], revert: bool
    ) -> dict[str, Any] | None:
        """A signed manifest for the rollout's model (or the device's previous one), to publish
        with the others of this step; the artifact's chunks are published first, once."""
        t = targets["devices"][device]
        if revert:
            prev = t.get("previous")
            if prev is None:
                return None
            ref, variant_name = prev["ref"], prev["variant"]
        else:
            ref, variant_name = model_ref, t["variant"]
        mo = ManifestOptions(**targets["manifest"])
        mv, variant, data, chunks = self._model(ref, variant_name, mo.chunk_size)
        if variant.sha256 not in self._published:
            publish_artifact(self.client, self.fleet.fleet, data, mo.chunk_size)
            self._published.add(variant.sha256)
        seq = self.fleet.next_seq()
        manifest = build_manifest(
            fleet=self.fleet.fleet,
            device=device,
            seq=seq,
            rollout=rid,
            mv=mv,
            variant=variant,
            data=data,
            hardware=targets["hardware"],
            opts=mo,
            now=self.clock(),
            chunks=chunks,
        )
        envelope = self.signer(device, manifest)
        return {
            "device": device,
            "seq": seq,
            "rollout": rid,
            "model_ref": mv.ref,
            "variant": variant.name,
            "sha256": variant.sha256,
            "envelope": envelope,
            "expires_at": manifest["expires_at"],
        }

    def _publish_manifests(self, outbox: list[dict[str, Any]]) -> None:
        """Publish a step's manifests together (one wait for all the acknowledgements) and
        record them as the devices' desired states in one transaction."""
        if not outbox:
            return
        self.client.publish_all(
            [
                (
                    device_topic(self.fleet.fleet, o["device"], "desired"),
                    json.dumps(o["envelope"]).encode(),
                    True,
                )
                for o in outbox
            ]
        )
        self.fleet.save_desired_many(outbox)

    def _model(self, ref: str, variant_name: str, chunk_size: int) -> tuple[Any, Any, bytes, dict]:
        """Version, variant, verified bytes and chunk hashes; read once per controller, since
        versions and variants are immutable."""
        key = (ref, variant_name, chunk_size)
        if key not in self._models:
            if len(self._models) >= 16:
                self._models.pop(next(iter(self._models)))
            mv = self.ws.registry.get_version(ref)
            variant = next(v for v in mv.variants if v.name == variant_name)
            data = self.ws.registry.variant_bytes(mv.ref, variant.name)
            self._models[key] = (mv, variant, data, describe_chunks(data, chunk_size))
        return self._models[key]

    def resign_expiring(self, now: float, margin: float | None = None) -> int:
        """Re-sign and republish desired states that would expire within ``margin`` seconds
        (default: half their lifetime), keeping their seq; returns how many."""
        n = 0
        for d in self.fleet.desired():
            m = dict(d.envelope["manifest"])
            life = m["expires_at"] - m["issued_at"]
            if d.expires_at - now > (life / 2 if margin is None else margin):
                continue
            m["issued_at"], m["expires_at"] = now, now + life
            envelope = self.signer(d.device_id, m)  # each device as it verifies
            if self.client is not None:
                self.client.publish_all(
                    [
                        (
                            device_topic(self.fleet.fleet, d.device_id, "desired"),
                            json.dumps(envelope).encode(),
                            True,
                        )
                    ]
                )
            self.fleet.save_desired(
                d.device_id,
                d.seq,
                d.rollout_id,
                d.model_ref,
                d.variant,
                d.sha256,
                envelope,
                m["expires_at"],
            )
            n += 1
        return n

    # --- reading -----------------------------------------------------------------------------
    def status(self, rollout_id: str) -> dict[str, Any]:
        with self.ws.db.session() as s:
            r = s.get(Rollout, rollout_id)
            if r is None:
                raise NotFound(f"no rollout {rollout_id!r}; see `edgeops rollout list`")
            plan = RolloutPlan.from_dict(r.plan)
            state = RolloutState.from_dict(r.state)
            out = summary(plan, state)
            out.update(
                model=r.model_ref,
                selector=r.selector,
                created_at=r.created_at,
                skipped=r.targets.get("skipped", {}),
                devices_detail={
                    d: {
                        "status": ds.status.value,
                        "attempt": ds.attempt,
                        "seq": ds.seq,
                        "reason": ds.reason,
                        "variant": r.targets["devices"][d]["variant"],
                    }
                    for d, ds in state.devices.items()
                },
                pending_requests=[q["op"] for q in r.requests],
                gates=r.targets.get("gates", {}).get("gates", []),
                verdicts=r.targets.get("verdicts", []),
            )
            return out

    def list(self) -> list[dict[str, Any]]:
        with self.ws.db.session() as s:
            q = (
                select(Rollout)
                .where(Rollout.fleet == self.fleet.fleet)
                .order_by(Rollout.created_at.desc())
            )
            return [
                {
                    "id": r.id,
                    "model": r.model_ref,
                    "selector": r.selector,
                    "status": r.status,
                    "devices": len(r.plan["devices"]),
                    "created_at": r.created_at,
                }
                for r in s.execute(q).scalars()
            ]
