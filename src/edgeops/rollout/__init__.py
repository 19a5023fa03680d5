"""Staged rollouts of a model version to a fleet: the pure decision logic.

The engine (:func:`step`) is a state machine with no I/O and no clock: the
adapter feeds it events with the current time and carries out the commands it
returns. See :mod:`edgeops.rollout.engine` for the exact rules.
"""

from __future__ import annotations

from .engine import step
from .events import (
    REPORT_KINDS,
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
    Tick,
)
from .plan import PLAN_FORMAT, RolloutPlan
from .state import STATE_FORMAT, DeviceState, DeviceStatus, RolloutState, RolloutStatus
from .summary import failure_counts, summary

__all__ = [
    "PLAN_FORMAT",
    "REPORT_KINDS",
    "STATE_FORMAT",
    "Abort",
    "Command",
    "Deploy",
    "Deployed",
    "DeviceReport",
    "DeviceState",
    "DeviceStatus",
    "Event",
    "Notify",
    "NotifyKind",
    "Pause",
    "Resume",
    "Revert",
    "Rollback",
    "RolloutPlan",
    "RolloutState",
    "RolloutStatus",
    "SoakVerdict",
    "Start",
    "Tick",
    "failure_counts",
    "step",
    "summary",
]
