"""``GET /metrics``: the fleet's state for Prometheus, in the text exposition format 0.0.4.

Written by hand (it is a small format): one ``# HELP`` and one ``# TYPE`` line per metric
family, then its samples. Label values are escaped (backslash, double quote, newline),
and so is help text (backslash, newline). Drift is computed fleet-wide over the windows
that ended in the last :data:`DRIFT_WINDOW_S` seconds only, so a scrape stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from ..errors import EdgeopsError
from .access import VIEWER
from .deps import workspace
from .monitoring import active_rollouts, clock, deployed, service

__all__ = ["CONTENT_TYPE", "DRIFT_WINDOW_S", "Family", "exposition", "router"]

router = APIRouter(tags=["metrics"], dependencies=[VIEWER])

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DRIFT_WINDOW_S = 3600.0

Sample = tuple[Mapping[str, str], float]


class Family:
    """One metric family: name, type, help and its samples (labels, value)."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[Sample] = []

    def add(self, value: float, **labels: Any) -> None:
        self.samples.append(({k: str(v) for k, v in labels.items()}, float(value)))


def _label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help_text(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _number(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return str(int(x)) if x.is_integer() and abs(x) < 2**53 else repr(x)


def exposition(families: Iterable[Family]) -> str:
    """The text of ``families`` in the Prometheus text format 0.0.4."""
    lines = []
    for f in families:
        lines.append(f"# HELP {f.name} {_help_text(f.help)}")
        lines.append(f"# TYPE {f.name} {f.kind}")
        for labels, value in f.samples:
            text = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
            name = f"{f.name}{{{text}}}" if text else f.name
            lines.append(f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"


def _drift(svc: Any, ws: Any, since: float, psi: Family, outputs: Family, count: Family) -> None:
    """Fleet-wide PSI per model version and variant over the windows ending after ``since``."""
    from edgeops_protocol.stats import merge_windows

    from ..monitoring.drift import drift_report

    fleet = svc.fleet.fleet
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for w in svc.store.windows(since=since, limit=None):
        groups.setdefault((w.model_ref, w.variant), []).append(w.stats)
    for (ref, variant), stats in sorted(groups.items()):
        try:  # a scrape shows what it can: one odd version must not hide the rest
            mv = ws.registry.get_version(ref)
            v = next(v for v in mv.variants if v.name == variant and "baseline" in v.meta)
            report = drift_report(v.meta["baseline"], merge_windows(stats))
        except (EdgeopsError, StopIteration, ValueError):
            continue
        count.add(report.count, fleet=fleet, model=ref, variant=variant)
        for d in report.features:
            if d.psi is not None:
                psi.add(d.psi, fleet=fleet, model=ref, variant=variant, feature=d.name)
        for name, d in (("class", report.classes), ("confidence", report.confidence)):
            if d.psi is not None:
                outputs.add(d.psi, fleet=fleet, model=ref, variant=variant, output=name)


def families(ws: Any, now: float) -> list[Family]:
    """Every metric family of the workspace's fleet at time ``now``."""
    svc = service(ws)
    fleet = svc.fleet.fleet
    devices = svc.fleet.devices()

    dev = Family("edgeops_devices", "gauge", "Devices of the fleet by connection state.")
    online = sum(1 for d in devices if d.online)
    dev.add(online, fleet=fleet, state="online")
    dev.add(len(devices) - online, fleet=fleet, state="offline")

    by_model = Family(
        "edgeops_devices_by_model", "gauge", "Devices reporting that they run a model version."
    )
    for d in deployed(devices):
        by_model.add(d["devices"], fleet=fleet, model=d["model"], version=d["version"])

    rollouts = Family(
        "edgeops_rollout_progress",
        "gauge",
        "Share of an unfinished rollout's devices that activated the new version (0-1).",
    )
    for r in active_rollouts(ws):
        rollouts.add(
            r["progress"], fleet=fleet, rollout=r["id"], model=r["model"], status=r["status"]
        )

    alerts = Family("edgeops_alerts_open", "gauge", "Open drift and skew alerts.")
    open_by: dict[tuple[str, str], int] = {}
    for a in svc.alerts(status="open", limit=100_000):
        open_by[(a["model"], a["metric"])] = open_by.get((a["model"], a["metric"]), 0) + 1
    for (model, metric), n in sorted(open_by.items()):
        alerts.add(n, fleet=fleet, model=model, metric=metric)

    window_h = f"{DRIFT_WINDOW_S / 3600:g} h"
    psi = Family(
        "edgeops_drift_psi",
        "gauge",
        f"PSI of an input feature, fleet-wide, over the windows ending in the last {window_h}.",
    )
    outputs = Family(
        "edgeops_output_drift_psi",
        "gauge",
        f"PSI of the predicted classes or the confidence, fleet-wide, last {window_h}.",
    )
    count = Family(
        "edgeops_drift_predictions",
        "gauge",
        f"Predictions in the windows the drift gauges rest on (last {window_h}).",
    )
    _drift(svc, ws, now - DRIFT_WINDOW_S, psi, outputs, count)

    windows = Family(
        "edgeops_telemetry_windows_total", "counter", "Telemetry windows stored by the collector."
    )
    windows.add(svc.store.window_count(), fleet=fleet)
    rejected = Family(
        "edgeops_ingest_rejected_total", "counter", "Messages the collector rejected, by reason."
    )
    for reason, n in svc.store.counters().items():
        rejected.add(n, fleet=fleet, reason=reason)
    return [dev, by_model, rollouts, alerts, psi, outputs, count, windows, rejected]


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(ws: Any = Depends(workspace), now: float = Depends(clock)) -> PlainTextResponse:
    """Gauges and counters of the fleet for Prometheus (text format 0.0.4): devices,
    versions deployed, rollout progress, open alerts, drift PSI over the last hour,
    telemetry windows stored and ingest rejections."""
    return PlainTextResponse(exposition(families(ws, now)), media_type=CONTENT_TYPE)
