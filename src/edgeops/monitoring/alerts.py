"""Alert rules: which alerts to open and which to close, from metric values over time.

Pure: :func:`evaluate` takes the rules, the observations (metric values per
``(scope, subject, metric)`` over time, with the sample count behind each) and
the alerts open now, and returns the alerts to open and to close, each with the
reason and the numbers that triggered it. Storing them, showing them
(``edgeops drift alerts``, the API) and reacting to them (retraining) is done
elsewhere.

A rule per metric (:class:`AlertRule`) has

* ``threshold`` and ``direction``: ``"above"`` breaches when ``value > threshold``,
  ``"below"`` when ``value < threshold``;
* ``min_samples``: observations backed by fewer samples are not evaluated at
  all: they neither open, nor count towards closing, nor interrupt a run;
* hysteresis: an open alert closes only after ``clear_after`` consecutive
  evaluated observations on the good side of a ``clear`` level, which defaults
  to ``threshold * (1 - hysteresis)`` (above) or ``threshold * (1 + hysteresis)``
  (below). Values between the clear level and the threshold keep the alert as
  it is and restart the count;
* ``open_after``: consecutive breaching observations needed to open (default 1).

>>> rule = AlertRule("psi", threshold=0.2, min_samples=100, hysteresis=0.25, clear_after=2)
>>> obs = [Observation("fleet", "ax_mean", "psi", v, 500, t)
...        for t, v in enumerate([0.05, 0.31])]
>>> to_open, to_close = evaluate([rule], obs, [])
>>> to_open[0].reason
'psi of ax_mean in fleet is 0.31, above 0.2 (500 samples)'
>>> later = [*obs, *(Observation("fleet", "ax_mean", "psi", v, 500, t)
...                  for t, v in [(2, 0.17), (3, 0.12), (4, 0.1)])]
>>> evaluate([rule], later, [OpenAlert("fleet", "ax_mean", "psi", opened_at=1)])[1][0].reason
'psi of ax_mean in fleet below 0.15 (0.2 less 25% hysteresis) in the last 2 evaluations: 0.12, 0.1'
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "DEFAULT_RULES",
    "AlertChange",
    "AlertRule",
    "Observation",
    "OpenAlert",
    "evaluate",
]

Key = tuple[str, str, str]


@dataclass(frozen=True)
class Observation:
    """One metric value: ``scope`` (``"fleet"``, ``"device:ID"``, ``"tag:T"``), ``subject``
    (a feature name, ``class``, ``confidence``, ``predictions``, ...), ``metric``, the
    ``samples`` it rests on, and the time ``at`` (seconds) it describes."""

    scope: str
    subject: str
    metric: str
    value: float
    samples: int
    at: float

    @property
    def key(self) -> Key:
        return (self.scope, self.subject, self.metric)


@dataclass(frozen=True)
class OpenAlert:
    """An alert that is open now: its key, when it opened, and the store's id if any."""

    scope: str
    subject: str
    metric: str
    opened_at: float | None = None
    id: int | None = None

    @property
    def key(self) -> Key:
        return (self.scope, self.subject, self.metric)


@dataclass(frozen=True)
class AlertRule:
    """When ``metric`` opens and closes an alert (module docstring)."""

    metric: str
    threshold: float
    direction: str = "above"
    min_samples: int = 0
    hysteresis: float = 0.2
    clear: float | None = None
    clear_after: int = 2
    open_after: int = 1

    def __post_init__(self) -> None:
        if self.direction not in ("above", "below"):
            raise ValueError(f"{self.metric}: direction must be 'above' or 'below'")
        if not math.isfinite(self.threshold):
            raise ValueError(f"{self.metric}: threshold must be a finite number")
        if self.min_samples < 0 or self.clear_after < 1 or self.open_after < 1:
            raise ValueError(f"{self.metric}: min_samples >= 0, clear_after and open_after >= 1")
        if not 0.0 <= self.hysteresis < 1.0:
            raise ValueError(f"{self.metric}: hysteresis must be in [0, 1)")
        level = self.clear_level
        if (self.direction == "above" and level > self.threshold) or (
            self.direction == "below" and level < self.threshold
        ):
            raise ValueError(f"{self.metric}: the clear level must be on the good side")

    @property
    def clear_level(self) -> float:
        if self.clear is not None:
            return self.clear
        sign = -1.0 if self.direction == "above" else 1.0
        return self.threshold * (1.0 + sign * self.hysteresis)

    def breaches(self, value: float) -> bool:
        if self.direction == "above":
            return value > self.threshold
        return value < self.threshold

    def clears(self, value: float) -> bool:
        if self.direction == "above":
            return value < self.clear_level
        return value > self.clear_level

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "threshold": self.threshold,
            "direction": self.direction,
            "min_samples": self.min_samples,
            "clear": self.clear_level,
            "clear_after": self.clear_after,
            "open_after": self.open_after,
        }


@dataclass(frozen=True)
class AlertChange:
    """An alert to open or to close, with what triggered it.

    ``value``, ``samples`` and ``at`` are the latest observation's; ``details``
    holds the rule and every value the decision rests on.
    """

    action: str  # "open" or "close"
    scope: str
    subject: str
    metric: str
    value: float
    threshold: float
    samples: int
    at: float
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    alert_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "scope": self.scope,
            "subject": self.subject,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "samples": self.samples,
            "at": self.at,
            "reason": self.reason,
            "details": self.details,
            "alert_id": self.alert_id,
        }


# Defaults, explained in docs/monitoring.md. p_adjusted is the drift rule's p-value
# (drift.Detection.observations), so its rule is the one benchmarked in bench/drift_quality.py.
DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule("p_adjusted", 0.005, "below", min_samples=200, clear=0.05, clear_after=2),
    AlertRule("psi", 0.25, "above", min_samples=500, hysteresis=0.2, clear_after=2),
    AlertRule("error_rate", 0.01, "above", min_samples=200, hysteresis=0.5, clear_after=3),
    AlertRule("non_finite_rate", 0.001, "above", min_samples=1000, hysteresis=0.5, clear_after=3),
    AlertRule("agreement", 0.97, "below", min_samples=100, clear=0.98, clear_after=2),
    AlertRule("accuracy_shortfall", 0.0, "above", min_samples=50, clear=-0.01, clear_after=2),
    AlertRule("group_p_adjusted", 0.005, "below", min_samples=200, clear=0.05, clear_after=2),
)


def _g(x: float) -> str:
    return f"{x:.4g}"


def _key_of(alert: OpenAlert | Mapping[str, Any]) -> tuple[Key, float | None, int | None]:
    if isinstance(alert, OpenAlert):
        return alert.key, alert.opened_at, alert.id
    opened = alert.get("opened_at")
    return (
        (str(alert["scope"]), str(alert["subject"]), str(alert["metric"])),
        float(opened) if isinstance(opened, (int, float)) else None,
        alert.get("id"),
    )


def evaluate(
    rules: Iterable[AlertRule],
    observations: Iterable[Observation],
    open_alerts: Iterable[OpenAlert | Mapping[str, Any]],
) -> tuple[list[AlertChange], list[AlertChange]]:
    """``(to_open, to_close)``: the alert changes the observations call for.

    Observations are grouped by ``(scope, subject, metric)`` and ordered by
    ``at``; a metric without a rule is ignored, and so is an open alert whose
    metric has none. For an open alert only observations after its
    ``opened_at`` count towards closing. ``open_alerts`` items are
    :class:`OpenAlert` or mappings with the same keys (a stored alert row).
    The result is ordered by key, so equal inputs give equal outputs.
    """
    by_metric: dict[str, AlertRule] = {}
    for rule in rules:
        if rule.metric in by_metric:
            raise ValueError(f"two rules for metric {rule.metric!r}")
        by_metric[rule.metric] = rule
    series: dict[Key, list[Observation]] = defaultdict(list)
    for o in observations:
        if o.metric in by_metric:
            series[o.key].append(o)
    opened: dict[Key, tuple[float | None, int | None]] = {}
    for a in open_alerts:
        key, at, alert_id = _key_of(a)
        opened[key] = (at, alert_id)

    to_open: list[AlertChange] = []
    to_close: list[AlertChange] = []
    for key in sorted(series):
        rule = by_metric[key[2]]
        evaluated = [
            o
            for o in sorted(series[key], key=lambda o: o.at)
            if o.samples >= rule.min_samples and math.isfinite(o.value)
        ]
        if key in opened:
            since, alert_id = opened[key]
            recent = [o for o in evaluated if since is None or o.at > since]
            change = _closing(rule, recent)
            if change is not None:
                to_close.append(replace(change, alert_id=alert_id))
        else:
            change = _opening(rule, evaluated)
            if change is not None:
                to_open.append(change)
    return to_open, to_close


def _where(o: Observation) -> str:
    return f"{o.metric} of {o.subject} in {o.scope}"


def _opening(rule: AlertRule, evaluated: list[Observation]) -> AlertChange | None:
    run = evaluated[-rule.open_after :]
    if len(run) < rule.open_after or not all(rule.breaches(o.value) for o in run):
        return None
    last = run[-1]
    reason = f"{_where(last)} is {_g(last.value)}, {rule.direction} {_g(rule.threshold)}"
    if rule.open_after > 1:
        reason += f" in the last {rule.open_after} evaluations"
    reason += f" ({last.samples} samples)"
    details = {"rule": rule.to_dict(), "values": [o.value for o in run], "at": [o.at for o in run]}
    return AlertChange(
        "open", *last.key, last.value, rule.threshold, last.samples, last.at, reason, details
    )


def _closing(rule: AlertRule, recent: list[Observation]) -> AlertChange | None:
    run = recent[-rule.clear_after :]
    if len(run) < rule.clear_after or not all(rule.clears(o.value) for o in run):
        return None
    last = run[-1]
    side = "below" if rule.direction == "above" else "above"
    if rule.clear is None:
        how = "less" if rule.direction == "above" else "plus"
        band = f" ({_g(rule.threshold)} {how} {rule.hysteresis:.0%} hysteresis)"
    else:
        band = f" (threshold {_g(rule.threshold)})"
    reason = (
        f"{_where(last)} {side} {_g(rule.clear_level)}{band} in the last "
        f"{rule.clear_after} evaluations: {', '.join(_g(o.value) for o in run)}"
    )
    details = {"rule": rule.to_dict(), "values": [o.value for o in run], "at": [o.at for o in run]}
    return AlertChange(
        "close", *last.key, last.value, rule.threshold, last.samples, last.at, reason, details
    )
