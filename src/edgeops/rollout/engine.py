"""The rollout engine: a pure state machine, events in, commands out.

``step(plan, state, event, now)`` returns the next state and the commands to
carry out. It reads no clock, does no I/O and never changes its inputs, so the
same plan, state, event and time always give the same answer; MQTT, the
database and the clock sit in the adapter that calls it.

>>> plan = RolloutPlan(id="r1", devices=("a", "b"), stages=(0.5, 1.0), max_failures=0.0,
...                    stage_wait=60.0, timeout=30.0, retries=1, previous={"a": True})
>>> state, commands = step(plan, RolloutState.initial(plan), Start(), now=0.0)
>>> [c for c in commands if not isinstance(c, Notify)]
[Deploy(device='a', attempt=1)]
>>> state, _ = step(plan, state, Deployed("a", seq=7), now=1.0)
>>> state, commands = step(plan, state, DeviceReport("a", 7, "activated"), now=5.0)
>>> state.status.value, state.soak_until
('soaking', 65.0)

The rules, exactly:

Stages. Starting stage ``k`` sends ``Deploy(device, 1)`` to each device it adds,
in plan order. A stage is done when each of its devices is activated, failed,
timed_out or rolled_back. The rollout then soaks until ``now + stage_wait`` and,
with ``require_soak_verdict``, until a passing SoakVerdict for that stage has
arrived during the soak; the next stage starts on the first event at or after
that. When the stage that covers every device is done, the rollout is
completed at once (there is no soak after it; Rollback stays possible).

Timeouts. A device has ``timeout`` seconds from its Deploy command, and again
from the adapter's Deployed answer, to report activated, failed, rejected or
rolled_back; at ``now >= deadline`` it is sent ``Deploy(device, attempt + 1)``
if ``attempt < 1 + retries``, else it becomes timed_out. A retry keeps the
device's seq: the earlier manifest is for the same model, so a report for it
still counts until Deployed names the new seq. A late activated (same seq)
turns timed_out into activated. Reverts time out and retry the same way and end
as revert_failed. In a step, devices out of attempts are marked first, then the
failure ratio is checked, and only then are retries sent: an aborting rollout
sends no Deploy.

Failures. ``failures`` counts devices whose outcome is failed (``failed`` and
``rejected`` reports), timed_out or rolled_back; ``started`` is the number of
devices in the stages started so far (every one was sent a Deploy). After every
event in running, soaking or paused, the rollout aborts if ``failures / started
> max_failures``. Within a stage ``started`` is fixed and failures only grow
(except through a late activation), so a stage that exceeds the ratio part way
would exceed it at its end too: aborting early loses nothing. With 10 devices
started and ``max_failures`` 0.2 the third failure aborts. A SoakVerdict with
``ok=False`` for the current or an earlier stage also aborts, whether or not
verdicts are required.

Abort and rollback. Abort (from pending, running, soaking or paused) and
Rollback (the same, and after completion) send ``Revert(device, 1)`` to every
device that may run the new model: activated ones, and also deploying and
timed_out ones, whose retained manifest would otherwise still install the new
model when they come back online. Failed and rolled_back devices get nothing:
they run their old model and have accepted the manifest's seq, so it cannot
take effect again. A device without a previous model cannot be
reverted: it becomes not_reverted and a Notify says so. A revert ends when the
device reports activated for the revert's seq (reverted), or fails, or times
out after its retries (revert_failed); when none is left reverting the rollout
is aborted or rolled_back. Abort and Rollback while aborting or rolling back
are ignored.

Pause. Paused, no stage starts and no retry is sent, but devices keep
reporting, deadlines keep running and soak time keeps counting (the devices
keep serving while paused). A device whose deadline passes with retries left
waits, and is retried on Resume; one with none left becomes timed_out, and the
failure ratio can still abort the rollout. A stage can finish, and the last one
complete the rollout, while paused. Abort and Rollback work while paused.

Ignored, never an error: events for devices not in the plan, Deployed for a
device not awaiting one or with a seq not above the known one, reports whose
seq is not the device's seq, events that do not apply in the current status,
and every event once the rollout is aborted or rolled_back (completed accepts
only Rollback). Time never runs backwards: a ``now`` before the latest one seen
is taken as the latest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import InvalidInput
from .events import (
    EVENT_TYPES,
    PROGRESS_KINDS,
    Abort,
    Command,
    Deploy,
    Deployed,
    DeviceReport,
    Event,
    Notify,
    NotifyKind,
    Pause,
    Resume,
    Revert,
    Rollback,
    SoakVerdict,
    Start,
)
from .plan import RolloutPlan
from .state import DEPLOY_FINAL, DeviceState, DeviceStatus, RolloutState, RolloutStatus
from .summary import count_failures, count_started

__all__ = ["step"]

_S, _D = RolloutStatus, DeviceStatus
_FORWARD = frozenset({_S.RUNNING, _S.SOAKING, _S.PAUSED})
_REVERTING = frozenset({_S.ABORTING, _S.ROLLING_BACK})
_STOPPED = frozenset({_S.ABORTED, _S.ROLLED_BACK})
# Devices that run, or may yet install, the new model: what a revert has to undo.
_MAY_RUN_NEW = frozenset({_D.ACTIVATED, _D.DEPLOYING, _D.TIMED_OUT})


def step(
    plan: RolloutPlan, state: RolloutState, event: Event, now: float
) -> tuple[RolloutState, list[Command]]:
    """Apply ``event`` at time ``now``: the next state and the commands to carry out."""
    if not isinstance(event, EVENT_TYPES):
        raise TypeError(f"not a rollout event: {event!r}")
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise InvalidInput(f"the time must be a finite number of seconds, not {now!r}")
    if (
        state.rollout != plan.id
        or state.devices.keys() != set(plan.devices)
        or state.stage >= len(plan.stages)
    ):
        raise InvalidInput(f"state of rollout {state.rollout!r} does not match plan {plan.id!r}")
    if state.status in _STOPPED:
        return state, []
    if state.status is _S.COMPLETED and not isinstance(event, Rollback):
        return state, []
    work = _Work.begin(plan, state, float(now))
    _apply(work, event)
    _advance(work)
    return work.finish(), work.commands


@dataclass
class _Work:
    """A mutable copy of the state for the length of one step."""

    plan: RolloutPlan
    now: float
    status: RolloutStatus
    stage: int
    stage_started_at: float | None
    soak_until: float | None
    verdict_ok: bool
    reason: str
    devices: dict[str, DeviceState]
    commands: list[Command] = field(default_factory=list)

    @classmethod
    def begin(cls, plan: RolloutPlan, s: RolloutState, now: float) -> _Work:
        return cls(
            plan=plan,
            now=now if s.clock is None else max(now, s.clock),
            status=s.status,
            stage=s.stage,
            stage_started_at=s.stage_started_at,
            soak_until=s.soak_until,
            verdict_ok=s.verdict_ok,
            reason=s.reason,
            devices=dict(s.devices),
        )

    def finish(self) -> RolloutState:
        return RolloutState(
            rollout=self.plan.id,
            status=self.status,
            devices=self.devices,
            stage=self.stage,
            stage_started_at=self.stage_started_at,
            soak_until=self.soak_until,
            verdict_ok=self.verdict_ok,
            clock=self.now,
            reason=self.reason,
        )

    def update(self, device: str, **changes: Any) -> None:
        self.devices[device] = replace(self.devices[device], **changes)

    def notify(self, kind: NotifyKind, detail: str) -> None:
        self.commands.append(Notify(kind, detail))

    @property
    def deadline(self) -> float:
        return self.now + self.plan.timeout


# --- events ------------------------------------------------------------------


def _apply(w: _Work, event: Event) -> None:
    if isinstance(event, Start):
        if w.status is _S.PENDING:
            _start_stage(w, 0)
    elif isinstance(event, Deployed):
        _on_deployed(w, event)
    elif isinstance(event, DeviceReport):
        _on_report(w, event)
    elif isinstance(event, Pause):
        if w.status in (_S.RUNNING, _S.SOAKING):
            w.status = _S.PAUSED
            w.notify(NotifyKind.PAUSED, f"stage {w.stage}")
    elif isinstance(event, Resume):
        if w.status is _S.PAUSED:
            w.status = _S.RUNNING if w.soak_until is None else _S.SOAKING
            w.notify(NotifyKind.RESUMED, f"stage {w.stage}")
    elif isinstance(event, Abort):
        if w.status is _S.PENDING or w.status in _FORWARD:
            _begin_revert(w, _S.ABORTING, event.reason)
    elif isinstance(event, Rollback):
        if w.status in (_S.PENDING, _S.COMPLETED) or w.status in _FORWARD:
            _begin_revert(w, _S.ROLLING_BACK, event.reason)
    elif isinstance(event, SoakVerdict):
        _on_verdict(w, event)
    # Tick: nothing but the checks in _advance.


def _on_deployed(w: _Work, e: Deployed) -> None:
    d = w.devices.get(e.device)
    if d is None or d.status not in (_D.DEPLOYING, _D.REVERTING):
        return
    if d.seq is not None and e.seq <= d.seq:
        return  # seqs only go up; a lower or equal one is a duplicate or out of order
    w.update(e.device, seq=e.seq, deadline=w.deadline)


def _on_report(w: _Work, e: DeviceReport) -> None:
    d = w.devices.get(e.device)
    if d is None or d.seq is None or e.seq != d.seq or e.kind in PROGRESS_KINDS:
        return
    name, kind = e.device, e.kind
    if d.status in (_D.DEPLOYING, _D.TIMED_OUT):
        if kind == "activated":
            if d.status is _D.TIMED_OUT:
                w.notify(NotifyKind.LATE_ACTIVATION, f"{name} activated after timing out")
            w.update(name, status=_D.ACTIVATED, outcome=_D.ACTIVATED, deadline=None, reason="")
        elif kind in ("failed", "rejected"):
            reason = e.reason if kind == "failed" else f"rejected: {e.reason}"
            w.update(name, status=_D.FAILED, outcome=_D.FAILED, deadline=None, reason=reason)
        else:
            _device_rolled_back(w, name, e.reason)
    elif d.status is _D.ACTIVATED and kind == "rolled_back":
        _device_rolled_back(w, name, e.reason)
    elif d.status is _D.REVERTING:
        if kind == "activated":
            w.update(name, status=_D.REVERTED, deadline=None, reason="")
        else:
            reason = f"revert {kind}: {e.reason}"
            w.update(name, status=_D.REVERT_FAILED, deadline=None, reason=reason)
            w.notify(NotifyKind.REVERT_FAILED, f"{name}: {reason}")
    elif d.status is _D.REVERT_FAILED and kind == "activated":
        w.update(name, status=_D.REVERTED, reason="")  # a revert that was only slow


def _device_rolled_back(w: _Work, name: str, reason: str) -> None:
    w.update(
        name,
        status=_D.ROLLED_BACK,
        outcome=_D.ROLLED_BACK,
        deadline=None,
        reason=f"rolled back on the device: {reason}",
    )


def _on_verdict(w: _Work, e: SoakVerdict) -> None:
    if w.status not in _FORWARD or e.stage > w.stage:
        return
    if not e.ok:
        _begin_revert(w, _S.ABORTING, f"soak verdict for stage {e.stage} failed: {e.reason}")
    elif e.stage == w.stage and w.soak_until is not None:
        w.verdict_ok = True  # a pass before the soak began is premature, and ignored


# --- transitions -------------------------------------------------------------


def _start_stage(w: _Work, k: int) -> None:
    sizes, n = w.plan.stage_sizes(), len(w.plan.devices)
    done = sizes[k - 1] if k > 0 else 0
    while sizes[k] == done:  # rounding gave this stage no devices of its own
        w.notify(NotifyKind.STAGE_SKIPPED, f"stage {k} adds no devices")
        k += 1
    w.status, w.stage, w.stage_started_at = _S.RUNNING, k, w.now
    w.soak_until, w.verdict_ok = None, False
    new = w.plan.devices[done : sizes[k]]
    w.notify(
        NotifyKind.STAGE_STARTED, f"stage {k}: {len(new)} new devices, {sizes[k]} of {n} in all"
    )
    for name in new:
        w.update(name, status=_D.DEPLOYING, attempt=1, seq=None, deadline=w.deadline, reason="")
        w.commands.append(Deploy(name, 1))


def _begin_revert(w: _Work, status: RolloutStatus, reason: str) -> None:
    w.status, w.reason = status, reason
    kind = NotifyKind.ABORTING if status is _S.ABORTING else NotifyKind.ROLLING_BACK
    w.notify(kind, reason)
    for name in w.plan.devices:
        if w.devices[name].status not in _MAY_RUN_NEW:
            continue
        if w.plan.can_revert(name):
            w.update(name, status=_D.REVERTING, attempt=1, seq=None, deadline=w.deadline)
            w.commands.append(Revert(name, 1))
        else:
            w.update(name, status=_D.NOT_REVERTED, deadline=None, reason="no previous model")
            w.notify(
                NotifyKind.NOT_REVERTED,
                f"{name} had no model before this rollout; it keeps the new one",
            )


def _advance(w: _Work) -> None:
    """What time and the event make happen: timeouts, aborts, retries, stage ends and starts."""
    _give_up(w)
    if w.status in _FORWARD:
        _check_failures(w)  # before retries, so an aborting rollout sends no Deploy
    _retry(w)
    if w.status in _FORWARD:
        _progress(w)
    if w.status in _REVERTING and all(d.status is not _D.REVERTING for d in w.devices.values()):
        aborting = w.status is _S.ABORTING
        w.status = _S.ABORTED if aborting else _S.ROLLED_BACK
        w.notify(NotifyKind.ABORTED if aborting else NotifyKind.ROLLED_BACK, w.reason)


def _expired(w: _Work) -> list[tuple[str, DeviceState]]:
    """The devices whose deadline has passed, in plan order."""
    pairs = [(name, w.devices[name]) for name in w.plan.devices]
    return [(name, d) for name, d in pairs if d.deadline is not None and w.now >= d.deadline]


def _give_up(w: _Work) -> None:
    """Devices past their deadline with no attempts left: timed_out or revert_failed."""
    for name, d in _expired(w):
        if d.attempt < 1 + w.plan.retries:
            continue
        reason = f"no answer in {w.plan.timeout:g}s, {d.attempt} attempts"
        if d.status is _D.REVERTING:
            w.update(name, status=_D.REVERT_FAILED, deadline=None, reason=reason)
            w.notify(NotifyKind.REVERT_FAILED, f"{name}: {reason}")
        else:
            w.update(name, status=_D.TIMED_OUT, outcome=_D.TIMED_OUT, deadline=None, reason=reason)
            w.notify(NotifyKind.DEVICE_TIMED_OUT, f"{name}: {reason}")


def _retry(w: _Work) -> None:
    """Devices past their deadline with attempts left get the command again (not while paused)."""
    if w.status is _S.PAUSED:
        return  # held: retried on Resume
    for name, d in _expired(w):
        attempt = d.attempt + 1
        w.update(name, attempt=attempt, deadline=w.deadline)
        w.notify(NotifyKind.RETRY, f"{name}: no answer in {w.plan.timeout:g}s; attempt {attempt}")
        w.commands.append((Revert if d.status is _D.REVERTING else Deploy)(name, attempt))


def _check_failures(w: _Work) -> None:
    failures = count_failures(w.devices.values())
    started = count_started(w.plan, w.stage, w.stage_started_at)
    if started and failures / started > w.plan.max_failures:
        _begin_revert(
            w,
            _S.ABORTING,
            f"{failures} of {started} devices failed ({failures / started:.0%}), "
            f"over max_failures {w.plan.max_failures:.0%}",
        )


def _progress(w: _Work) -> None:
    sizes = w.plan.stage_sizes()
    if w.soak_until is None:
        if any(w.devices[d].status not in DEPLOY_FINAL for d in w.plan.stage_devices(w.stage)):
            return
        counts = _outcomes(w, w.plan.devices[: sizes[w.stage]])
        w.notify(NotifyKind.STAGE_COMPLETED, f"stage {w.stage}: {counts}")
        if sizes[w.stage] == len(w.plan.devices):
            w.status = _S.COMPLETED
            w.notify(NotifyKind.COMPLETED, counts)
            return
        w.soak_until, w.verdict_ok = w.now + w.plan.stage_wait, False
        if w.status is _S.RUNNING:
            w.status = _S.SOAKING
        wait = " and a passing verdict" if w.plan.require_soak_verdict else ""
        w.notify(NotifyKind.SOAK_STARTED, f"stage {w.stage}: until {w.soak_until:g}{wait}")
    if (
        w.status is _S.SOAKING
        and w.soak_until is not None
        and w.now >= w.soak_until
        and (w.verdict_ok or not w.plan.require_soak_verdict)
    ):
        _start_stage(w, w.stage + 1)


def _outcomes(w: _Work, names: tuple[str, ...]) -> str:
    statuses = [w.devices[name].status for name in names]
    return ", ".join(f"{statuses.count(s)} {s.value}" for s in DeviceStatus if s in statuses)
