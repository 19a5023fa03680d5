"""Quality gates for rollouts: limits on what the new version does on the devices that
already run it, judged from their telemetry while a stage soaks.

A gate is ``METRIC OP LIMIT`` (``error_rate<=0.02``, ``confidence>=0.6``). The
metrics are measured on the merged telemetry windows of the rollout's model
version from the devices of the stages started so far, whose ``end`` falls in
the soak, per variant (each against its own baseline):

============== == ===========================================================
metric         op meaning
============== == ===========================================================
error_rate     <= failed predictions / predictions
p95_latency_ms <= 95th percentile of the latency histogram (milliseconds)
confidence     >= mean top-class score (from the confidence histogram)
drift_psi      <= largest per-feature PSI against the baseline
drift_flagged  <= features whose chi-square test against the baseline rejects
                  at the drift rule's alpha (Bonferroni over all tests)
============== == ===========================================================

:func:`judge` returns a :class:`GateVerdict`: ``ok`` is None until every variant
seen has ``min_count`` predictions (no verdict on too little data), False as
soon as one with enough breaks a limit, True otherwise. The rollout controller
(:mod:`edgeops.fleet.controller`) turns it into the engine's ``SoakVerdict``.

>>> g = QualityGates.parse(["error_rate<=0.05", "confidence>=0.5"], min_count=10)
>>> [x.text for x in g.gates]
['error_rate<=0.05', 'confidence>=0.5']
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeops_protocol.baseline import CONFIDENCE_EDGES

from ..errors import InvalidInput

__all__ = ["GATE_METRICS", "Gate", "GateVerdict", "QualityGates", "judge", "measure"]

GATE_METRICS: dict[str, tuple[str, str]] = {
    "error_rate": ("<=", "failed predictions / predictions"),
    "p95_latency_ms": ("<=", "95th percentile latency in milliseconds"),
    "confidence": (">=", "mean top-class score"),
    "drift_psi": ("<=", "largest per-feature PSI against the baseline"),
    "drift_flagged": ("<=", "features the drift test flags against the baseline"),
}
DEFAULT_MIN_COUNT = 500
_GATE_RE = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    limit: float

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{self.limit:g}"

    def holds(self, value: float) -> bool:
        return value <= self.limit if self.op == "<=" else value >= self.limit

    @classmethod
    def parse(cls, text: str) -> Gate:
        m = _GATE_RE.match(text)
        if not m:
            raise InvalidInput(
                f"bad gate {text!r}; write METRIC<=LIMIT or METRIC>=LIMIT, "
                f"e.g. error_rate<=0.02 (metrics: {', '.join(GATE_METRICS)})"
            )
        metric, op, raw = m.groups()
        if metric not in GATE_METRICS:
            raise InvalidInput(
                f"unknown gate metric {metric!r}; use one of {', '.join(GATE_METRICS)}"
            )
        if op != GATE_METRICS[metric][0]:
            raise InvalidInput(
                f"gate {metric} takes {GATE_METRICS[metric][0]} ({GATE_METRICS[metric][1]})"
            )
        try:
            limit = float(raw)
        except ValueError:
            raise InvalidInput(f"gate {text!r}: {raw!r} is not a number") from None
        if not math.isfinite(limit) or limit < 0:
            raise InvalidInput(f"gate {text!r}: the limit must be a finite number >= 0")
        return cls(metric, op, limit)


@dataclass(frozen=True)
class QualityGates:
    """The gates of a rollout, and the predictions a verdict needs per variant."""

    gates: tuple[Gate, ...] = ()
    min_count: int = DEFAULT_MIN_COUNT

    def __bool__(self) -> bool:
        return bool(self.gates)

    @classmethod
    def parse(cls, texts: Sequence[str], min_count: int = DEFAULT_MIN_COUNT) -> QualityGates:
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise InvalidInput("the gates' minimum prediction count must be a positive integer")
        gates = tuple(Gate.parse(t) for t in texts)
        metrics = [g.metric for g in gates]
        dup = {m for m in metrics if metrics.count(m) > 1}
        if dup:
            raise InvalidInput(f"gate {sorted(dup)[0]} is given twice; give each metric once")
        return cls(gates, min_count)

    def to_dict(self) -> dict[str, Any]:
        return {"gates": [g.text for g in self.gates], "min_count": self.min_count}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any] | None) -> QualityGates:
        if not obj:
            return cls()
        return cls.parse(list(obj.get("gates", [])), int(obj.get("min_count", DEFAULT_MIN_COUNT)))


@dataclass(frozen=True)
class GateVerdict:
    """``ok``: None (not enough predictions yet), True (all limits hold) or False."""

    ok: bool | None
    counts: dict[str, int] = field(default_factory=dict)  # predictions per variant
    values: dict[str, dict[str, float | None]] = field(default_factory=dict)  # variant -> metric
    failed: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        if self.ok is False:
            return "; ".join(self.failed)
        parts = [
            f"{v}: " + ", ".join(f"{m} {_g(x)}" for m, x in vals.items())
            for v, vals in self.values.items()
        ]
        n = ", ".join(f"{v} {c} predictions" for v, c in self.counts.items()) or "no predictions"
        return f"{n}; " + "; ".join(parts) if parts else n

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": dict(self.counts),
            "values": {v: dict(x) for v, x in self.values.items()},
            "failed": list(self.failed),
            "reason": self.reason,
        }


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def mean_confidence(baseline: Mapping[str, Any], counts: Sequence[float]) -> float | None:
    """Mean of the values counted over the confidence edges (bins at their midpoints;
    under- and overflow at the outer edges)."""
    edges = np.asarray(baseline["outputs"].get("confidence_edges", CONFIDENCE_EDGES), float)
    c = np.asarray(counts, dtype=np.float64)
    if c.size != edges.size + 1 or c.sum() <= 0:
        return None
    mids = np.concatenate([[edges[0]], (edges[:-1] + edges[1:]) / 2, [edges[-1]]])
    return float((c * mids).sum() / c.sum())


def measure(baseline: Mapping[str, Any], windows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every gate metric of ``windows`` (one variant's statistics windows), and their count."""
    from edgeops_protocol.stats import merge_windows

    from .drift import drift_report

    merged = merge_windows(list(windows))
    report = drift_report(baseline, merged)
    names = {d.name for d in report.features}
    return {
        "count": report.count,
        "error_rate": report.error_rate,
        "p95_latency_ms": report.latency_p95_ms,
        "confidence": mean_confidence(baseline, merged["confidence_counts"]),
        "drift_psi": max((d.psi for d in report.features), default=0.0) if report.count else None,
        "drift_flagged": float(sum(1 for d in report.flagged() if d.name in names)),
    }


def judge(
    gates: QualityGates, by_variant: Mapping[str, tuple[Mapping[str, Any], Sequence[Mapping]]]
) -> GateVerdict:
    """The verdict on ``{variant: (baseline, windows)}``."""
    counts: dict[str, int] = {}
    values: dict[str, dict[str, float | None]] = {}
    failed: list[str] = []
    enough = True
    for variant, (baseline, windows) in sorted(by_variant.items()):
        m = measure(baseline, windows) if windows else {"count": 0}
        counts[variant] = int(m["count"])
        values[variant] = {g.metric: m.get(g.metric) for g in gates.gates}
        if m["count"] < gates.min_count:
            enough = False
            continue
        for g in gates.gates:
            value = m.get(g.metric)
            if value is not None and not g.holds(value):
                failed.append(
                    f"{variant}: {g.metric} {_g(value)} breaks {g.text} "
                    f"over {m['count']} predictions"
                )
    if failed:
        return GateVerdict(False, counts, values, tuple(failed))
    if not counts or not enough:
        return GateVerdict(None, counts, values)
    return GateVerdict(True, counts, values)
