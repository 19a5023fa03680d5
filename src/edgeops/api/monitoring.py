"""Monitoring resources: drift, the heat map, distributions, telemetry, skew, alerts, samples
and labels, ingest counters, and the fleet overview the dashboard starts from.

Every route calls the monitoring library (``MonitoringService``, ``MonitoringStore``) and
shapes its answer; time ranges are device time in Unix seconds. ``since`` and ``until``
take Unix seconds (``1795760000``) or a duration before now (``90s``, ``15m``, ``1h``,
``7d``); "now" is the :func:`clock` dependency, so tests can fix it.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections import Counter
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..errors import InvalidInput, NotFound
from .access import OPERATOR, VIEWER
from .deps import workspace

router = APIRouter(tags=["monitoring"], dependencies=[VIEWER])

SCOPE_HELP = "fleet, device:ID[,ID] or tag:T[+tag:U]."
TIME_HELP = "Unix seconds, or a duration before now such as 90s, 15m, 1h, 7d."
SPECIAL = ("outputs", "confidence", "latency")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def clock() -> float:
    """Now, in Unix seconds (a dependency: tests override it)."""
    return time.time()


def parse_time(text: str | None, now: float, what: str) -> float | None:
    """Unix seconds from ``1795760000`` (a time) or ``1h`` (that long before ``now``)."""
    if text is None or not text.strip():
        return None
    t = text.strip()
    m = _DURATION.fullmatch(t)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        value = float(t)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidInput(f"{what} {text!r} is neither Unix seconds nor a duration like 1h")
    return value


def finite(obj: Any) -> Any:
    """``obj`` with non-finite floats as None (JSON has no NaN or infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def service(ws: Any) -> Any:
    from ..monitoring.service import MonitoringService

    return MonitoringService(ws)


def _resolve(ws: Any, model: str | None) -> str | None:
    """``NAME@REF`` (an alias too) as the stored ``NAME@VERSION``; a bare NAME stays."""
    if model and "@" in model:
        return ws.registry.get_version(model).ref
    return model


def _variant(mv: Any, name: str | None) -> Any:
    with_baseline = [v for v in mv.variants if v.name != "original" and "baseline" in v.meta]
    if name:
        with_baseline = [v for v in with_baseline if v.name == name]
    if not with_baseline:
        what = f"variant {name!r}" if name else "variant"
        raise NotFound(f"{mv.ref} has no {what} with a baseline profile; register one with it")
    return with_baseline[0]


def _merged(
    svc: Any, ref: str, variant: str, scope: str, since: float | None, until: float | None
) -> tuple[dict[str, Any] | None, int]:
    """The sum of the scope's windows of one variant (None: no window) and their number."""
    from edgeops_protocol.stats import merge_windows

    devices = svc.devices_in(scope)
    one = devices[0] if devices is not None and len(devices) == 1 else None
    rows = svc.store.windows(ref, variant=variant, device=one, since=since, until=until, limit=None)
    stats = [w.stats for w in rows if devices is None or w.device_id in devices]
    return (merge_windows(stats) if stats else None), len(stats)


def _bins(edges: list[float]) -> list[str]:
    """Labels of the ``len(edges) + 1`` bins: underflow, interior (last closed), overflow."""
    e = [f"{x:.4g}" for x in edges]
    inner = [f"[{a}, {b})" for a, b in itertools.pairwise(e)]
    if inner:
        inner[-1] = inner[-1][:-1] + "]"
    return [f"< {e[0]}", *inner, f"> {e[-1]}"]


def _shares(counts: list[int] | None) -> dict[str, Any] | None:
    if counts is None:
        return None
    total = sum(counts)
    return {
        "total": total,
        "counts": list(counts),
        "probabilities": [c / total if total else 0.0 for c in counts],
    }


# --- response shapes -------------------------------------------------------------------


class Histogram(BaseModel):
    total: int = Field(description="Values counted.")
    counts: list[int] = Field(description="Count per bin.")
    probabilities: list[float] = Field(description="Share per bin (counts / total).")


class Distribution(BaseModel):
    model: str
    variant: str
    variants: list[str] = Field(description="Variants of the version with a baseline.")
    features: list[str] = Field(description="The model's input features, in order.")
    feature: str = Field(description="A feature name, or outputs, confidence, latency.")
    kind: str = Field(description="feature, classes, confidence or latency.")
    scope: str
    since: float | None
    until: float | None
    bins: list[str] = Field(description="One label per bin (class names for outputs).")
    edges: list[float] | None = Field(description="Bin edges (None for classes).")
    baseline: Histogram | None = Field(description="Training counts (None for latency).")
    live: Histogram | None = Field(description="Counts of the windows in scope (None: none).")
    non_finite: int = Field(description="Live values that were NaN or infinite.")
    windows: int = Field(description="Windows merged into live.")


class WindowSummary(BaseModel):
    device: str
    variant: str
    boot: str
    seq: int
    start: float
    end: float
    count: int = Field(description="Predictions in the window.")
    errors: int


class Telemetry(BaseModel):
    model: str
    total: int = Field(description="Windows matching the filters.")
    windows: list[WindowSummary] = Field(description="Newest first, at most limit.")


class AlertOut(BaseModel):
    id: int
    model: str
    scope: str
    subject: str = Field(description="Feature name, class, confidence or predictions.")
    metric: str
    value: float | None
    threshold: float | None
    samples: int
    status: str
    opened_at: datetime
    closed_at: datetime | None
    reason: str
    at: float | None = Field(description="Device time of the observation that opened it.")


class Evaluation(BaseModel):
    model: str
    opened: list[dict[str, Any]]
    closed: list[dict[str, Any]]


class SampleOut(BaseModel):
    sample_id: str
    device: str
    model: str
    variant: str
    ts: float
    predicted: str
    label: str | None
    labelled_at: datetime | None
    features: list[float | None]
    outputs: list[float | None]


class LabelIn(BaseModel):
    sample_id: str = Field(description="The sample's id, <device>/<boot>/<seq>.")
    label: str = Field(description="The true label: a printable string of 1-128 characters.")
    device: str | None = Field(None, description="Refuse unless the sample is this device's.")


class LabelOut(BaseModel):
    sample_id: str
    label: str
    status: str = Field(description="added, changed (a correction) or unchanged.")


class Counters(BaseModel):
    fleet: str
    rejected: dict[str, int] = Field(description="Messages the collector rejected, by reason.")
    total: int
    windows: int = Field(description="Telemetry windows stored.")


class Error(BaseModel):
    error: str = Field(description="What went wrong and what to do.")
    kind: str


# --- drift -----------------------------------------------------------------------------


@router.get("/models/{name}/{ref}/drift")
def drift(
    name: str,
    ref: str,
    scope: str = Query("fleet", description=SCOPE_HELP),
    variant: str | None = Query(None, description="Only this variant."),
    since: str | None = Query(None, description=f"Windows ending at or after this: {TIME_HELP}"),
    until: str | None = Query(None, description=f"Windows ending before this: {TIME_HELP}"),
    ws: Any = Depends(workspace),
    now: float = Depends(clock),
) -> dict[str, Any]:
    """Drift of the merged windows in scope and time range against the training baseline.

    Per variant: ``windows``, ``devices``, ``report`` (per feature, class and confidence:
    ``psi``, ``js``, ``ks``, ``chi2``, ``p_adjusted``, ``psi_critical``; error rate,
    latency quantiles) and ``rule`` (the drift rule's ``flagged`` distributions and
    ``p_rule``). Variants without windows are left out."""
    out = service(ws).report(
        f"{name}@{ref}",
        scope=scope,
        variant=variant,
        since=parse_time(since, now, "since"),
        until=parse_time(until, now, "until"),
    )
    return finite(out)


@router.get("/models/{name}/{ref}/drift/timeline")
def drift_timeline(
    name: str,
    ref: str,
    scope: str = Query("fleet", description=SCOPE_HELP),
    variant: str | None = Query(None, description="Only this variant."),
    buckets: int = Query(24, ge=1, le=200, description="Time buckets between first and last."),
    since: str | None = Query(None, description=f"Windows ending at or after this: {TIME_HELP}"),
    ws: Any = Depends(workspace),
    now: float = Depends(clock),
) -> dict[str, Any]:
    """The drift heat map: PSI of every input feature per time bucket.

    ``variants.<name>.features`` lists the features; each of ``variants.<name>.buckets``
    (empty buckets left out) has ``t`` (its middle, Unix seconds), ``count`` (predictions)
    and ``psi`` (one value per feature, in the order of ``features``)."""
    out = service(ws).timeline(
        f"{name}@{ref}",
        variant=variant,
        scope=scope,
        buckets=buckets,
        since=parse_time(since, now, "since"),
    )
    return finite(out)


@router.get("/models/{name}/{ref}/distribution", response_model=Distribution)
def distribution(
    name: str,
    ref: str,
    feature: str | None = Query(
        None,
        description="An input feature (default: the first), or outputs (predicted classes), "
        "confidence, latency. A feature of that name wins over the three.",
    ),
    variant: str | None = Query(None, description="Default: the first with a baseline."),
    scope: str = Query("fleet", description=SCOPE_HELP),
    since: str | None = Query(None, description=f"Windows ending at or after this: {TIME_HELP}"),
    until: str | None = Query(None, description=f"Windows ending before this: {TIME_HELP}"),
    ws: Any = Depends(workspace),
    now: float = Depends(clock),
) -> dict[str, Any]:
    """Baseline against live histogram of one input feature, the predicted classes, the
    confidence or the latency: bin edges and labels, counts and shares of each side."""
    from edgeops_protocol.stats import LATENCY_EDGES_MS

    svc = service(ws)
    mv = ws.registry.get_version(f"{name}@{ref}")
    v = _variant(mv, variant)
    base = v.meta["baseline"]
    names = [f["name"] for f in base.get("features", [])]
    feature = feature or (names[0] if names else "outputs")
    t0, t1 = parse_time(since, now, "since"), parse_time(until, now, "until")
    live, windows = _merged(svc, mv.ref, v.name, scope, t0, t1)
    out_base = base.get("outputs", {})
    non_finite = 0
    if feature in names:
        j = names.index(feature)
        kind, edges = "feature", list(base["features"][j]["edges"])
        ref_counts: list[int] | None = base["features"][j]["counts"]
        counts = live["features"][j] if live else None
        non_finite = live["feature_non_finite"][j] if live else 0
    elif feature == "outputs":
        kind, edges = "classes", None
        ref_counts = out_base.get("class_counts")
        counts = live["class_counts"] if live else None
        non_finite = live["non_finite_outputs"] if live else 0
    elif feature == "confidence":
        kind, edges = "confidence", list(out_base.get("confidence_edges", []))
        ref_counts = out_base.get("confidence_counts")
        counts = live["confidence_counts"] if live else None
    elif feature == "latency":
        kind, edges, ref_counts = "latency", list(LATENCY_EDGES_MS), None
        counts = live["latency_counts"] if live else None
    else:
        raise NotFound(
            f"{mv.ref} {v.name} has no feature {feature!r}; use one of "
            f"{', '.join([*names, *SPECIAL])}"
        )
    return {
        "model": mv.ref,
        "variant": v.name,
        "variants": [x.name for x in mv.variants if x.name != "original" and "baseline" in x.meta],
        "features": names,
        "feature": feature,
        "kind": kind,
        "scope": scope,
        "since": t0,
        "until": t1,
        "bins": list(out_base.get("labels", [])) if edges is None else _bins(edges),
        "edges": edges,
        "baseline": _shares(ref_counts),
        "live": _shares(counts),
        "non_finite": non_finite,
        "windows": windows,
    }


# --- telemetry, skew ---------------------------------------------------------------------


@router.get("/models/{name}/{ref}/telemetry", response_model=Telemetry)
def telemetry(
    name: str,
    ref: str,
    device: str | None = Query(None, description="Only this device."),
    variant: str | None = Query(None, description="Only this variant."),
    since: str | None = Query(None, description=f"Windows ending at or after this: {TIME_HELP}"),
    until: str | None = Query(None, description=f"Windows ending before this: {TIME_HELP}"),
    limit: int = Query(100, ge=1, le=10_000, description="At most this many, newest first."),
    ws: Any = Depends(workspace),
    now: float = Depends(clock),
) -> dict[str, Any]:
    """The stored statistics windows of a version, summarized (newest first)."""
    ref_ = ws.registry.get_version(f"{name}@{ref}").ref
    rows = service(ws).store.windows(
        ref_,
        variant=variant,
        device=device,
        since=parse_time(since, now, "since"),
        until=parse_time(until, now, "until"),
        limit=None,
    )
    return {
        "model": ref_,
        "total": len(rows),
        "windows": [
            {
                "device": w.device_id,
                "variant": w.variant,
                "boot": w.boot,
                "seq": w.seq,
                "start": w.start,
                "end": w.end,
                "count": w.count,
                "errors": w.stats.get("errors", 0),
            }
            for w in reversed(rows[-limit:])
        ],
    }


@router.get("/models/{name}/{ref}/skew")
def skew(
    name: str,
    ref: str,
    scope: str = Query("fleet", description=SCOPE_HELP),
    since: str | None = Query(None, description=f"Samples and windows since: {TIME_HELP}"),
    limit: int = Query(1000, ge=1, le=100_000, description="Samples re-run on the server."),
    ws: Any = Depends(workspace),
    now: float = Depends(clock),
) -> dict[str, Any]:
    """Production skew: ``agreement`` of device and server outputs on sampled inputs,
    on-device ``accuracy`` of labelled samples against the offline accuracy, and
    ``outliers`` (devices unlike the rest of their group). None where there is no data."""
    out = service(ws).skew(
        f"{name}@{ref}", scope=scope, since=parse_time(since, now, "since"), limit=limit
    )
    return finite(out)


# --- alerts ----------------------------------------------------------------------------


@router.get("/alerts", response_model=list[AlertOut])
def list_alerts(
    status: str | None = Query(None, description="open or closed (default: both)."),
    model: str | None = Query(None, description="NAME (every version) or NAME@VERSION/ALIAS."),
    limit: int = Query(200, ge=1, le=10_000, description="At most this many, newest first."),
    ws: Any = Depends(workspace),
) -> list[dict[str, Any]]:
    """Drift and skew alerts of the fleet, newest first, with the reason each opened."""
    svc = service(ws)
    if model and "@" not in model:
        rows = svc.alerts(status=status, limit=100_000)
        rows = [a for a in rows if a["model"].split("@", 1)[0] == model][:limit]
    else:
        rows = svc.alerts(model=_resolve(ws, model), status=status, limit=limit)
    return finite(rows)


@router.post(
    "/models/{name}/{ref}/alerts/evaluate", response_model=Evaluation, dependencies=[OPERATOR]
)
def evaluate_alerts(name: str, ref: str, ws: Any = Depends(workspace)) -> dict[str, Any]:
    """Run the alert rules on the version's telemetry now: the alerts opened and closed."""
    svc = service(ws)
    mv = ws.registry.get_version(f"{name}@{ref}")
    changes = svc.evaluate_alerts(mv.ref)
    return {
        "model": mv.ref,
        "opened": [finite(c.to_dict()) for c in changes if c.action == "open"],
        "closed": [finite(c.to_dict()) for c in changes if c.action == "close"],
    }


# --- samples and labels ------------------------------------------------------------------


@router.get("/samples", response_model=list[SampleOut])
def list_samples(
    model: str | None = Query(None, description="NAME (every version) or NAME@VERSION/ALIAS."),
    device: str | None = Query(None, description="Only this device."),
    labelled: bool | None = Query(None, description="true: only labelled; false: unlabelled."),
    limit: int = Query(100, ge=1, le=10_000, description="At most this many, newest first."),
    ws: Any = Depends(workspace),
) -> list[dict[str, Any]]:
    """Sampled predictions, newest first, with their labels."""
    rows = service(ws).store.samples(
        _resolve(ws, model), device=device, labelled=labelled, limit=limit
    )
    return [
        {
            "sample_id": r.sample_id,
            "device": r.device_id,
            "model": r.model_ref,
            "variant": r.variant,
            "ts": r.ts,
            "predicted": r.predicted,
            "label": r.label,
            "labelled_at": r.labelled_at,
            "features": finite(r.features),
            "outputs": finite(r.outputs),
        }
        for r in rows
    ]


@router.post(
    "/labels",
    response_model=LabelOut,
    responses={400: {"model": Error}, 404: {"model": Error}},
    dependencies=[OPERATOR],
)
def add_label(body: LabelIn = Body(...), ws: Any = Depends(workspace)) -> Any:
    """Ground truth for a sampled prediction (a later label replaces an earlier one).

    400 for a label that is not 1-128 printable characters or a sample of another
    device than ``device``; 404 for an unknown sample."""
    try:
        status = service(ws).store.add_label(body.sample_id, body.label, device=body.device)
    except InvalidInput as exc:
        return JSONResponse(status_code=400, content={"error": str(exc), "kind": "InvalidInput"})
    return {"sample_id": body.sample_id, "label": body.label, "status": status}


# --- counters and overview -----------------------------------------------------------------


@router.get("/monitoring/counters", response_model=Counters)
def counters(ws: Any = Depends(workspace)) -> dict[str, Any]:
    """Messages the collector rejected so far, by reason, and the windows stored."""
    store = service(ws).store
    rejected = store.counters()
    return {
        "fleet": store.fleet,
        "rejected": rejected,
        "total": sum(rejected.values()),
        "windows": store.window_count(),
    }


def active_rollouts(ws: Any) -> list[dict[str, Any]]:
    """Rollouts not finished yet, with the share of their devices activated."""
    from ..fleet.controller import TERMINAL, RolloutController

    ctl = RolloutController(ws, key=None)
    out = []
    for r in ctl.list():
        if r["status"] in TERMINAL:
            continue
        st = ctl.status(r["id"])
        counts = st["counts"]
        total = st["devices"]
        out.append(
            {
                "id": r["id"],
                "model": r["model"],
                "selector": r["selector"],
                "status": st["status"],
                "stage": st["stage"],
                "stages": st["stages"],
                "devices": total,
                "activated": counts.get("activated", 0),
                "failures": st["failures"],
                "progress": counts.get("activated", 0) / total if total else 0.0,
                "created_at": r["created_at"],
            }
        )
    return out


def deployed(devices: list[Any]) -> list[dict[str, Any]]:
    """Model versions the devices report running, with device counts."""
    from ..fleet.store import device_summary

    total: Counter[tuple[str, int]] = Counter()
    online: Counter[tuple[str, int]] = Counter()
    for d in map(device_summary, devices):
        if d["model"] is None:
            continue
        key = (d["model"], d["version"])
        total[key] += 1
        online[key] += bool(d["online"])
    return [
        {"model": m, "version": v, "ref": f"{m}@{v}", "devices": n, "online": online[(m, v)]}
        for (m, v), n in sorted(total.items())
    ]


@router.get("/overview")
def overview(ws: Any = Depends(workspace)) -> dict[str, Any]:
    """What the dashboard's fleet overview shows: devices (total, online), the versions
    deployed with their device counts, active rollouts with progress, open alerts and the
    registered models."""
    svc = service(ws)
    devices = svc.fleet.devices()
    online = sum(1 for d in devices if d.online)
    return {
        "fleet": svc.fleet.fleet,
        "devices": {"total": len(devices), "online": online, "offline": len(devices) - online},
        "deployed": deployed(devices),
        "undeployed": sum(1 for d in devices if not (d.state or {}).get("model")),
        "rollouts": active_rollouts(ws),
        "alerts": {"open": len(svc.alerts(status="open", limit=100_000))},
        "models": ws.registry.models(),
        "telemetry": {"windows": svc.store.window_count()},
    }
