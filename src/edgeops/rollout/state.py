"""Where a rollout stands: its status, its stage and every device's progress.

The state is a value. :func:`edgeops.rollout.engine.step` returns a new one
and never changes the one it was given. ``to_dict`` gives plain JSON types with
a ``format`` number, so the server can store the state in its database after
every step and resume the rollout after a restart with ``from_dict``.

Rollout statuses::

    pending ─Start─▶ running ⇄ soaking ─(last stage done)─▶ completed ─Rollback─▶ rolling_back
                       │  ▲ Pause/Resume                                              │
                       ▼  │                                                           ▼
                      paused              running/soaking/paused ─Abort, too many  rolled_back
                                          failures, failed verdict─▶ aborting ─▶ aborted

Device statuses::

    pending ─▶ deploying ─▶ activated ─▶ rolled_back (the device gave up during probation)
                   │    └─▶ failed (failed or rejected)
                   └─▶ timed_out ─(late activated, same seq)─▶ activated
    activated, deploying, timed_out ─(abort/rollback)─▶ reverting ─▶ reverted | revert_failed
                                                      └─▶ not_reverted (no previous model)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from ..errors import InvalidInput
from . import _fields
from .plan import RolloutPlan

__all__ = [
    "DEPLOY_FINAL",
    "FAILURES",
    "STATE_FORMAT",
    "DeviceState",
    "DeviceStatus",
    "RolloutState",
    "RolloutStatus",
]

STATE_FORMAT = 1

_E = TypeVar("_E", bound=Enum)


class RolloutStatus(str, Enum):
    """Where the rollout as a whole stands."""

    PENDING = "pending"
    RUNNING = "running"  # a stage is deploying
    SOAKING = "soaking"  # a stage is done; waiting stage_wait (and a verdict)
    PAUSED = "paused"  # either of the two above, held by the operator
    COMPLETED = "completed"
    ABORTING = "aborting"
    ABORTED = "aborted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


class DeviceStatus(str, Enum):
    """Where one target device stands."""

    PENDING = "pending"
    DEPLOYING = "deploying"
    ACTIVATED = "activated"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    ROLLED_BACK = "rolled_back"
    REVERTING = "reverting"
    REVERTED = "reverted"
    REVERT_FAILED = "revert_failed"
    NOT_REVERTED = "not_reverted"


#: A device in one of these has finished its part of a stage.
DEPLOY_FINAL = frozenset(
    {DeviceStatus.ACTIVATED, DeviceStatus.FAILED, DeviceStatus.TIMED_OUT, DeviceStatus.ROLLED_BACK}
)
#: Outcomes that count towards the failure ratio.
FAILURES = frozenset({DeviceStatus.FAILED, DeviceStatus.TIMED_OUT, DeviceStatus.ROLLED_BACK})


@dataclass(frozen=True)
class DeviceState:
    """One device's progress.

    ``attempt`` counts the Deploy (or, once reverting, Revert) commands sent;
    ``seq`` is the seq of the newest manifest published for the device (None
    until the adapter answers a command with Deployed, and again when a revert
    begins); ``deadline`` is when the current attempt times out (None when no
    answer is awaited); ``reason`` is why it last failed; ``outcome`` is how its
    deployment ended (one of DEPLOY_FINAL), kept when the device is reverted.
    """

    status: DeviceStatus = DeviceStatus.PENDING
    attempt: int = 0
    seq: int | None = None
    deadline: float | None = None
    reason: str = ""
    outcome: DeviceStatus | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "attempt": self.attempt,
            "seq": self.seq,
            "deadline": self.deadline,
            "reason": self.reason,
            "outcome": None if self.outcome is None else self.outcome.value,
        }

    @classmethod
    def from_dict(cls, data: object, device: str) -> DeviceState:
        what = f"rollout state of device {device!r}"
        obj = _fields.mapping(data, what)
        outcome = obj.get("outcome")
        return cls(
            status=_enum(DeviceStatus, obj.get("status"), what),
            attempt=_fields.integer(obj, "attempt", what),
            seq=_fields.optional_integer(obj, "seq", what, lo=1),
            deadline=_fields.optional_number(obj, "deadline", what),
            reason=_fields.text(obj, "reason", what),
            outcome=None if outcome is None else _enum(DeviceStatus, outcome, what),
        )


@dataclass(frozen=True)
class RolloutState:
    """The rollout ``rollout`` (a plan id) at one moment.

    ``stage`` is the index into the plan's stages of the stage running or
    soaking; ``stage_started_at`` is None until Start; ``soak_until`` is set
    when the current stage's devices are all done; ``verdict_ok`` records a
    passing SoakVerdict for it; ``clock`` is the latest time the engine saw;
    ``reason`` says why the rollout is aborting or rolling back.
    """

    rollout: str
    status: RolloutStatus
    devices: Mapping[str, DeviceState] = field(hash=False)
    stage: int = 0
    stage_started_at: float | None = None
    soak_until: float | None = None
    verdict_ok: bool = False
    clock: float | None = None
    reason: str = ""

    @classmethod
    def initial(cls, plan: RolloutPlan) -> RolloutState:
        """A rollout that has not started: every device pending."""
        return cls(
            rollout=plan.id,
            status=RolloutStatus.PENDING,
            devices={d: DeviceState() for d in plan.devices},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (no NaN or infinity), with a ``format`` number."""
        return {
            "format": STATE_FORMAT,
            "rollout": self.rollout,
            "status": self.status.value,
            "stage": self.stage,
            "stage_started_at": self.stage_started_at,
            "soak_until": self.soak_until,
            "verdict_ok": self.verdict_ok,
            "clock": self.clock,
            "reason": self.reason,
            "devices": {name: d.to_dict() for name, d in self.devices.items()},
        }

    @classmethod
    def from_dict(cls, data: object) -> RolloutState:
        """The state :meth:`to_dict` gave; raises InvalidInput on anything else."""
        what = "rollout state"
        obj = _fields.mapping(data, what)
        _fields.check_format(obj, what, STATE_FORMAT)
        devices = _fields.mapping(obj.get("devices"), f"{what}: 'devices'")
        return cls(
            rollout=_fields.text(obj, "rollout", what, nonempty=True),
            status=_enum(RolloutStatus, obj.get("status"), what),
            devices={name: DeviceState.from_dict(d, name) for name, d in devices.items()},
            stage=_fields.integer(obj, "stage", what),
            stage_started_at=_fields.optional_number(obj, "stage_started_at", what),
            soak_until=_fields.optional_number(obj, "soak_until", what),
            verdict_ok=_fields.flag(obj, "verdict_ok", what),
            clock=_fields.optional_number(obj, "clock", what),
            reason=_fields.text(obj, "reason", what),
        )


def _enum(kind: type[_E], value: object, what: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        names = [m.value for m in kind]
        raise InvalidInput(f"{what}: unknown status {value!r}; expected one of {names}") from None
