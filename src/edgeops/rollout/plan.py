"""What a rollout is asked to do: the target devices, the stages and the limits.

A plan is fixed for the life of a rollout; the engine reads it and never changes
it. Stage ``k`` covers the first ``max(1, ceil(stages[k] * N))`` devices
(cumulative). Rounding can give a stage no new devices; such a stage is skipped.

>>> plan = RolloutPlan(id="r1", devices=tuple(f"d{i:02}" for i in range(20)),
...                    stages=(0.05, 0.25, 1.0), max_failures=0.2, stage_wait=600.0,
...                    timeout=300.0, retries=1, previous={})
>>> plan.stage_sizes()
(1, 5, 20)
>>> plan.stage_devices(1)
('d01', 'd02', 'd03', 'd04')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from ..errors import InvalidInput
from . import _fields

__all__ = ["PLAN_FORMAT", "RolloutPlan"]

PLAN_FORMAT = 1
MAX_RETRIES = 100  # a bound, so a typo cannot make the server retry a device forever
_CEIL_SLACK = 1e-9  # 0.07 * 100 is 7.000000000000001 in floating point, and must give 7


@dataclass(frozen=True)
class RolloutPlan:
    """The devices to move, in deployment order, and the rules for moving them.

    ``stages`` are cumulative fractions, strictly increasing, the last one 1.0.
    ``max_failures`` (0..1) is the failure ratio the rollout tolerates; above it,
    it aborts. ``stage_wait`` is the soak in seconds between a stage finishing and
    the next starting; ``timeout`` the seconds a device has per attempt;
    ``retries`` the extra attempts a silent device gets. ``previous`` says which
    devices had a model before (something to revert to); a device missing from
    it counts as having none. With ``require_soak_verdict`` a soak only ends on
    a passing :class:`~edgeops.rollout.events.SoakVerdict`.
    """

    id: str
    devices: tuple[str, ...]
    stages: tuple[float, ...]
    max_failures: float
    stage_wait: float
    timeout: float
    retries: int
    previous: Mapping[str, bool] = field(default_factory=dict, hash=False)
    require_soak_verdict: bool = False

    def __post_init__(self) -> None:
        # Copies, so a caller changing its list or dict later cannot change the plan.
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "previous", dict(self.previous))
        _validate(self)

    def stage_sizes(self) -> tuple[int, ...]:
        """How many devices stages ``0..k`` cover together, for each ``k``."""
        n = len(self.devices)
        return tuple(min(n, max(1, math.ceil(f * n - _CEIL_SLACK))) for f in self.stages)

    def stage_devices(self, k: int) -> tuple[str, ...]:
        """The devices stage ``k`` adds (empty for a stage that rounding skips)."""
        sizes = self.stage_sizes()
        return self.devices[(sizes[k - 1] if k > 0 else 0) : sizes[k]]

    def stage_of(self, device: str) -> int:
        """The first stage that covers ``device``."""
        index = self.devices.index(device)
        return next(k for k, size in enumerate(self.stage_sizes()) if index < size)

    def can_revert(self, device: str) -> bool:
        """Whether ``device`` had a model before, so a revert has something to go back to."""
        return self.previous.get(device, False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, with a ``format`` number."""
        return {
            "format": PLAN_FORMAT,
            "id": self.id,
            "devices": list(self.devices),
            "stages": list(self.stages),
            "max_failures": self.max_failures,
            "stage_wait": self.stage_wait,
            "timeout": self.timeout,
            "retries": self.retries,
            "previous": dict(self.previous),
            "require_soak_verdict": self.require_soak_verdict,
        }

    @classmethod
    def from_dict(cls, data: object) -> RolloutPlan:
        """The plan :meth:`to_dict` gave; raises InvalidInput on anything else."""
        what = "rollout plan"
        obj = _fields.mapping(data, what)
        _fields.check_format(obj, what, PLAN_FORMAT)
        devices, stages = obj.get("devices"), obj.get("stages")
        if not isinstance(devices, list) or not isinstance(stages, list):
            raise InvalidInput(f"{what}: 'devices' and 'stages' must be lists")
        return cls(
            id=_fields.text(obj, "id", what, nonempty=True),
            devices=tuple(devices),
            stages=tuple(stages),
            max_failures=_fields.number(obj, "max_failures", what),
            stage_wait=_fields.number(obj, "stage_wait", what),
            timeout=_fields.number(obj, "timeout", what),
            retries=_fields.integer(obj, "retries", what),
            previous=_fields.mapping(obj.get("previous"), f"{what}: 'previous'"),
            require_soak_verdict=_fields.flag(obj, "require_soak_verdict", what),
        )


def _finite(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _validate(plan: RolloutPlan) -> None:
    where = f"rollout plan {plan.id!r}"
    if not isinstance(plan.id, str) or not plan.id:
        raise InvalidInput("a rollout plan needs a non-empty id")
    if not plan.devices:
        raise InvalidInput(f"{where} has no target devices")
    if not all(isinstance(d, str) and d for d in plan.devices):
        raise InvalidInput(f"{where}: device names must be non-empty strings")
    if len(set(plan.devices)) != len(plan.devices):
        raise InvalidInput(f"{where} lists a device twice")
    if not plan.stages or not all(_finite(f) and 0 < f <= 1 for f in plan.stages):
        raise InvalidInput(f"{where}: stages must be fractions in (0, 1], e.g. 0.05 0.25 1.0")
    if any(b <= a for a, b in pairwise(plan.stages)) or plan.stages[-1] != 1.0:
        raise InvalidInput(f"{where}: stages must increase strictly and end at 1.0")
    if not _finite(plan.max_failures) or not 0 <= plan.max_failures <= 1:
        raise InvalidInput(f"{where}: max_failures must be between 0 and 1")
    if not _finite(plan.stage_wait) or plan.stage_wait < 0:
        raise InvalidInput(f"{where}: stage_wait must be a finite number of seconds >= 0")
    if not _finite(plan.timeout) or plan.timeout <= 0:
        raise InvalidInput(f"{where}: timeout must be a finite number of seconds > 0")
    if isinstance(plan.retries, bool) or not isinstance(plan.retries, int):
        raise InvalidInput(f"{where}: retries must be an integer")
    if not 0 <= plan.retries <= MAX_RETRIES:
        raise InvalidInput(f"{where}: retries must be between 0 and {MAX_RETRIES}")
    unknown = sorted(set(plan.previous) - set(plan.devices))
    if unknown:
        raise InvalidInput(f"{where}: 'previous' names devices that are not targets: {unknown}")
    if not all(isinstance(v, bool) for v in plan.previous.values()):
        raise InvalidInput(f"{where}: 'previous' values must be true or false")
    if not isinstance(plan.require_soak_verdict, bool):
        raise InvalidInput(f"{where}: require_soak_verdict must be true or false")
