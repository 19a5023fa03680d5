"""Retraining policies: when a model is retrained and what happens to a better challenger.

A policy is a YAML document per model (``edgeops retrain policy set NAME FILE``)::

    model: wrist
    champion: production        # the alias naming the version in service
    triggers:
      alerts: [drift, skew]     # open alerts on the champion (groups or metric names)
      new_data: true            # a data set version newer than the champion's
      labelled_samples: 200     # labelled fleet samples since the last retraining
      every: 7d                 # on a schedule
    data:
      from_samples: true        # fold labelled fleet samples into a new data version first
      holdout: 0.3              # share of those samples kept out of training, to evaluate
      min_new_samples: 300      # after an alert, wait for this many samples labelled since
    evaluation:
      min_improvement: 0.0      # challenger accuracy - champion accuracy must exceed this
    action: canary              # register | canary
    promote: production         # alias moved to the challenger (after its rollout for canary)
    cooldown: 10m               # no retraining sooner than this after the last one
    rollout:                    # for action canary: `edgeops rollout start` options
      target: all
      stages: [20, 100]
      stage_wait: 1m
      max_failures: 10
      timeout: 5m
      gates: [error_rate<=0.05, drift_flagged<=0]
      gate_min_count: 500

Every key but ``model`` is optional; the defaults are those above, except that no
trigger is on unless given (``edgeops retrain NAME`` always works by hand).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput

__all__ = ["ALERT_GROUPS", "RetrainPolicy", "RolloutPolicy", "parse_policy"]

ALERT_GROUPS: dict[str, tuple[str, ...]] = {
    "drift": ("p_adjusted", "psi"),
    "skew": ("agreement", "accuracy_shortfall", "group_p_adjusted"),
    "errors": ("error_rate", "non_finite_rate"),
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def duration(value: Any, where: str) -> float:
    """Seconds of ``30s``, ``10m``, ``2h``, ``7d`` or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise InvalidInput(f"policy field {where!r}: {value!r} is not a duration like 10m")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInput(f"policy field {where!r} must be a duration >= 0")
    return seconds


def _keys(obj: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise InvalidInput(f"policy field {where!r} must be a mapping")
    unknown = sorted(set(map(str, obj)) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"policy field {where!r} has unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}"
        )
    return dict(obj)


def _number(value: Any, where: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise InvalidInput(f"policy field {where!r} must be a number in [{lo:g}, {hi:g}]")
    return float(value)


def _int(value: Any, where: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise InvalidInput(f"policy field {where!r} must be an integer >= {lo}")
    return value


@dataclass(frozen=True)
class RolloutPolicy:
    target: str = "all"
    stages: tuple[float, ...] = (0.2, 1.0)
    stage_wait: float = 60.0
    max_failures: float = 0.1
    timeout: float = 300.0
    gates: tuple[str, ...] = ()
    gate_min_count: int = 500


@dataclass(frozen=True)
class RetrainPolicy:
    model: str
    champion: str = "production"
    alert_metrics: tuple[str, ...] = ()
    new_data: bool = False
    labelled_samples: int = 0  # 0: off
    every: float = 0.0  # seconds; 0: off
    from_samples: bool = True
    holdout: float = 0.3
    min_new_samples: int = 0  # labelled since the alert opened, before an alert retrains
    min_improvement: float = 0.0
    action: str = "canary"
    promote: str | None = "production"
    cooldown: float = 600.0
    rollout: RolloutPolicy = field(default_factory=RolloutPolicy)

    def triggers(self) -> list[str]:
        out = []
        if self.alert_metrics:
            out.append("alerts: " + ", ".join(self.alert_metrics))
        if self.new_data:
            out.append("new data")
        if self.labelled_samples:
            out.append(f"{self.labelled_samples} labelled samples")
        if self.every:
            out.append(f"every {self.every:g} s")
        return out


def parse_policy(raw: Any) -> RetrainPolicy:
    """A policy from its parsed YAML; a clear error for each bad field."""
    top = _keys(
        raw,
        "policy",
        (
            "model",
            "champion",
            "triggers",
            "data",
            "evaluation",
            "action",
            "promote",
            "cooldown",
            "rollout",
        ),
    )
    model = top.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("policy field 'model' must name the model, e.g. model: wrist")
    champion = str(top.get("champion", "production"))
    trig = _keys(
        top.get("triggers"), "triggers", ("alerts", "new_data", "labelled_samples", "every")
    )
    alerts = trig.get("alerts", [])
    if isinstance(alerts, str):
        alerts = [alerts]
    if not isinstance(alerts, list):
        raise InvalidInput("policy field 'triggers.alerts' must be a list, e.g. [drift, skew]")
    metrics: list[str] = []
    known = {m for group in ALERT_GROUPS.values() for m in group}
    for a in alerts:
        if a in ALERT_GROUPS:
            metrics.extend(ALERT_GROUPS[a])
        elif a in known:
            metrics.append(a)
        else:
            raise InvalidInput(
                f"policy field 'triggers.alerts': unknown {a!r}; use "
                f"{', '.join(ALERT_GROUPS)} or a metric ({', '.join(sorted(known))})"
            )
    new_data = trig.get("new_data", False)
    if not isinstance(new_data, bool):
        raise InvalidInput("policy field 'triggers.new_data' must be true or false")
    data = _keys(top.get("data"), "data", ("from_samples", "holdout", "min_new_samples"))
    from_samples = data.get("from_samples", True)
    if not isinstance(from_samples, bool):
        raise InvalidInput("policy field 'data.from_samples' must be true or false")
    ev = _keys(top.get("evaluation"), "evaluation", ("min_improvement",))
    action = top.get("action", "canary")
    if action not in ("register", "canary"):
        raise InvalidInput("policy field 'action' must be register or canary")
    promote = top.get("promote", "production")
    if promote is not None and (not isinstance(promote, str) or not promote):
        raise InvalidInput("policy field 'promote' must be an alias name or null")
    ro = _keys(
        top.get("rollout"),
        "rollout",
        ("target", "stages", "stage_wait", "max_failures", "timeout", "gates", "gate_min_count"),
    )
    stages = ro.get("stages", [20, 100])
    if (
        not isinstance(stages, list)
        or not stages
        or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in stages)
        or stages != sorted(stages)
        or stages[0] <= 0
        or stages[-1] != 100
    ):
        raise InvalidInput(
            "policy field 'rollout.stages' must be rising percentages ending at 100, e.g. [20, 100]"
        )
    gates = ro.get("gates", [])
    if not isinstance(gates, list) or not all(isinstance(g, str) for g in gates):
        raise InvalidInput("policy field 'rollout.gates' must be a list like [error_rate<=0.05]")
    from ..monitoring.gates import QualityGates

    gate_min = _int(ro.get("gate_min_count", 500), "rollout.gate_min_count", 1)
    QualityGates.parse(gates, gate_min)  # refuse bad gates now, not when a retrain is decided
    return RetrainPolicy(
        model=model,
        champion=champion,
        alert_metrics=tuple(dict.fromkeys(metrics)),
        new_data=new_data,
        labelled_samples=_int(trig.get("labelled_samples", 0), "triggers.labelled_samples", 0),
        every=duration(trig.get("every", 0), "triggers.every"),
        from_samples=from_samples,
        holdout=_number(data.get("holdout", 0.3), "data.holdout", 0.0, 0.9),
        min_new_samples=_int(data.get("min_new_samples", 0), "data.min_new_samples", 0),
        min_improvement=_number(
            ev.get("min_improvement", 0.0), "evaluation.min_improvement", -1, 1
        ),
        action=action,
        promote=promote,
        cooldown=duration(top.get("cooldown", "10m"), "cooldown"),
        rollout=RolloutPolicy(
            target=str(ro.get("target", "all")),
            stages=tuple(float(x) / 100 for x in stages),
            stage_wait=duration(ro.get("stage_wait", "1m"), "rollout.stage_wait"),
            max_failures=_number(ro.get("max_failures", 10), "rollout.max_failures", 0, 100) / 100,
            timeout=duration(ro.get("timeout", "5m"), "rollout.timeout"),
            gates=tuple(gates),
            gate_min_count=gate_min,
        ),
    )
