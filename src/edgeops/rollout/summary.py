"""How far a rollout has got, in numbers: the failure ratio and the status view.

The engine decides on :func:`count_failures` and :func:`count_started`; the CLI
shows :func:`summary`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .plan import RolloutPlan
from .state import FAILURES, DeviceState, DeviceStatus, RolloutState

__all__ = ["count_failures", "count_started", "failure_counts", "summary"]


def count_failures(devices: Iterable[DeviceState]) -> int:
    """Devices whose deployment ended failed, timed_out or rolled_back (kept when reverted)."""
    return sum(1 for d in devices if d.outcome in FAILURES)


def count_started(plan: RolloutPlan, stage: int, stage_started_at: float | None) -> int:
    """Devices in the stages started so far: every one of them was sent a Deploy."""
    return 0 if stage_started_at is None else plan.stage_sizes()[stage]


def failure_counts(plan: RolloutPlan, state: RolloutState) -> tuple[int, int]:
    """``(failures, started)``: the two sides of the failure ratio."""
    started = count_started(plan, state.stage, state.stage_started_at)
    return count_failures(state.devices.values()), started


def summary(plan: RolloutPlan, state: RolloutState) -> dict[str, Any]:
    """Plain-JSON overview for the CLI status view: status, stage, counts, failure ratio."""
    failures, started = failure_counts(plan, state)
    counts = {s.value: 0 for s in DeviceStatus}
    for d in state.devices.values():
        counts[d.status.value] += 1
    return {
        "rollout": plan.id,
        "status": state.status.value,
        "stage": state.stage,
        "stages": len(plan.stages),
        "stage_sizes": list(plan.stage_sizes()),
        "stage_started_at": state.stage_started_at,
        "soak_until": state.soak_until,
        "devices": len(plan.devices),
        "started": started,
        "failures": failures,
        "failure_ratio": failures / started if started else 0.0,
        "max_failures": plan.max_failures,
        "counts": counts,
        "reason": state.reason,
    }
