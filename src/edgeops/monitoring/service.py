"""Monitoring over the stores: drift reports, alert evaluation, skew — what the CLI, the API
and the rollout gates call. The statistics are in ``drift``, ``alerts`` and ``skew``
(pure); the windows and samples in ``store``; this module joins them with the registry.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import InvalidInput, NotFound
from ..fleet.selector import Selector
from ..fleet.store import FleetStore, all_tags
from ..store.schema import Alert
from .alerts import DEFAULT_RULES, AlertChange, AlertRule, Observation, evaluate
from .drift import detect, drift_report
from .store import MonitoringStore

__all__ = ["DEFAULT_MIN_COUNT", "MonitoringService"]

DEFAULT_MIN_COUNT = 250  # predictions per tested window (docs/monitoring.md)
HISTORY = 6  # evaluation points per scope for the alert rules' hysteresis


class MonitoringService:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.fleet = FleetStore(ws.db, ws.settings.fleet)
        self.store = MonitoringStore(ws.db, ws.settings.fleet)

    # --- scopes and baselines ---------------------------------------------------------
    def devices_in(self, scope: str) -> list[str] | None:
        """Device ids of ``fleet`` (None: every device), ``device:ID`` or ``tag:T``."""
        if scope == "fleet":
            return None
        sel = Selector.parse(scope)
        return [d.device_id for d in self.fleet.devices() if sel.matches(d.device_id, all_tags(d))]

    def _variants(self, mv: Any, variant: str | None) -> list[Any]:
        named = [v for v in mv.variants if v.name != "original" and "baseline" in v.meta]
        if variant:
            named = [v for v in named if v.name == variant]
            if not named:
                raise NotFound(f"{mv.ref} has no variant {variant!r} with a baseline")
        return named

    def _windows(
        self,
        mv: Any,
        variant: str,
        devices: list[str] | None,
        since: float | None,
        until: float | None,
    ) -> list[Any]:
        rows = self.store.windows(mv.ref, variant=variant, since=since, until=until, limit=None)
        return [w for w in rows if devices is None or w.device_id in devices]

    # --- reports -------------------------------------------------------------------------
    def report(
        self,
        ref: str,
        *,
        scope: str = "fleet",
        variant: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> dict[str, Any]:
        """Drift of the merged windows of each variant in scope and time range."""
        from edgeops_protocol.stats import merge_windows

        mv = self.ws.registry.get_version(ref)
        devices = self.devices_in(scope)
        out: dict[str, Any] = {
            "model": mv.ref,
            "scope": scope,
            "since": since,
            "until": until,
            "variants": {},
        }
        for v in self._variants(mv, variant):
            windows = self._windows(mv, v.name, devices, since, until)
            if not windows:
                continue
            report = drift_report(v.meta["baseline"], merge_windows([w.stats for w in windows]))
            rule = detect(
                v.meta["baseline"], [w.stats for w in windows], min_count=DEFAULT_MIN_COUNT
            )
            out["variants"][v.name] = {
                "windows": len(windows),
                "devices": sorted({w.device_id for w in windows}),
                "report": report.to_dict(),
                "rule": {
                    "flagged": [d.name for d in rule.flagged()],
                    "p_rule": {d.name: p for d, p in rule.p_rule()},
                },
            }
        return out

    def timeline(
        self,
        ref: str,
        *,
        variant: str | None = None,
        scope: str = "fleet",
        buckets: int = 24,
        since: float | None = None,
    ) -> dict[str, Any]:
        """Per feature PSI over time: the drift heat map (features × time buckets)."""
        from edgeops_protocol.stats import merge_windows

        mv = self.ws.registry.get_version(ref)
        devices = self.devices_in(scope)
        out: dict[str, Any] = {"model": mv.ref, "variants": {}}
        for v in self._variants(mv, variant):
            windows = self._windows(mv, v.name, devices, since, None)
            if not windows:
                continue
            lo, hi = windows[0].end, windows[-1].end
            width = max((hi - lo) / buckets, 1e-9)
            groups: dict[int, list[Any]] = {}
            for w in windows:
                groups.setdefault(min(int((w.end - lo) / width), buckets - 1), []).append(w)
            names = [f["name"] for f in v.meta["baseline"]["features"]]
            cells = []
            for b in sorted(groups):
                r = drift_report(v.meta["baseline"], merge_windows([w.stats for w in groups[b]]))
                cells.append(
                    {
                        "t": lo + (b + 0.5) * width,
                        "count": r.count,
                        "psi": [d.psi for d in r.features],
                    }
                )
            out["variants"][v.name] = {"features": names, "buckets": cells}
        return out

    # --- alerts --------------------------------------------------------------------------
    def observations(
        self, ref: str, scopes: list[str] | None = None, min_count: int = DEFAULT_MIN_COUNT
    ) -> list[Observation]:
        """The drift rule's observations at the last few windows of each scope."""
        mv = self.ws.registry.get_version(ref)
        if scopes is None:
            scopes = ["fleet", *(f"device:{d.device_id}" for d in self.fleet.devices())]
        obs: list[Observation] = []
        for v in self._variants(mv, None):
            for scope in scopes:
                windows = self._windows(mv, v.name, self.devices_in(scope), None, None)
                for k in range(max(0, len(windows) - HISTORY), len(windows)):
                    upto = [w.stats for w in windows[: k + 1]]
                    if sum(s["count"] for s in upto) < min_count:
                        continue
                    det = detect(v.meta["baseline"], upto, min_count=min_count)
                    obs.extend(det.observations(f"{scope}/{v.name}", windows[k].end))
        return obs

    def evaluate_alerts(
        self,
        ref: str,
        rules: tuple[AlertRule, ...] = DEFAULT_RULES,
        scopes: list[str] | None = None,
    ) -> list[AlertChange]:
        """Open and close alert records for ``ref``; the changes made."""
        mv = self.ws.registry.get_version(ref)
        obs = self.observations(mv.ref, scopes)
        open_rows = self.alerts(model=mv.ref, status="open")
        to_open, to_close = evaluate(
            rules,
            obs,
            [
                {
                    "scope": a["scope"],
                    "subject": a["subject"],
                    "metric": a["metric"],
                    "opened_at": a["at"],
                    "id": a["id"],
                }
                for a in open_rows
            ],
        )
        fleet = self.fleet.fleet

        def write(s: Session) -> None:
            for c in to_open:
                s.add(
                    Alert(
                        fleet=fleet,
                        model_ref=mv.ref,
                        scope=c.scope,
                        metric=c.metric,
                        subject=c.subject,
                        value=c.value,
                        threshold=c.threshold,
                        samples=c.samples,
                        status="open",
                        details={**c.details, "reason": c.reason, "at": c.at},
                    )
                )
            for c in to_close:
                row = s.get(Alert, c.alert_id)
                if row is not None and row.status == "open":
                    row.status = "closed"
                    row.closed_at = datetime.now(timezone.utc)
                    row.details = {**row.details, "closed_reason": c.reason}

        self.ws.db.write(write)
        return [*to_open, *to_close]

    def alerts(
        self, model: str | None = None, status: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        if status not in (None, "open", "closed"):
            raise InvalidInput("alert status is 'open' or 'closed'")
        with self.ws.db.session() as s:
            q = select(Alert).where(Alert.fleet == self.fleet.fleet)
            if model:
                q = q.where(Alert.model_ref == model)
            if status:
                q = q.where(Alert.status == status)
            rows = s.execute(q.order_by(Alert.id.desc()).limit(limit)).scalars()
            return [
                {
                    "id": a.id,
                    "model": a.model_ref,
                    "scope": a.scope,
                    "subject": a.subject,
                    "metric": a.metric,
                    "value": a.value,
                    "threshold": a.threshold,
                    "samples": a.samples,
                    "status": a.status,
                    "opened_at": a.opened_at,
                    "closed_at": a.closed_at,
                    "reason": a.details.get("reason", ""),
                    "at": a.details.get("at", time.time()),
                }
                for a in rows
            ]
