"""Monitoring over the stores: drift reports, alert evaluation, skew — what the CLI, the API
and the rollout gates call. The statistics are in ``drift``, ``alerts`` and ``skew``
(pure); the windows and samples in ``store``; this module joins them with the registry.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..errors import EdgeopsError, InvalidInput, NotFound
from ..fleet.selector import Selector
from ..fleet.store import FleetStore, all_tags
from ..store.schema import Alert, Sample, TelemetryWindow
from .alerts import DEFAULT_RULES, AlertChange, AlertRule, Observation, evaluate
from .drift import _latest, detect, drift_report, time_slices
from .skew import agreement, group_outliers, on_device_accuracy
from .store import MonitoringStore

__all__ = ["DEFAULT_MIN_COUNT", "MonitoringService"]

DEFAULT_MIN_COUNT = 250  # predictions per tested window (docs/monitoring.md)
HISTORY = 6  # drift evaluation points per scope for the alert rules' hysteresis
WINDOWS_PER_DEVICE = 200  # newest windows of each device read to evaluate the alert rules

log = logging.getLogger("edgeops.monitoring")


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

    # --- skew --------------------------------------------------------------------------
    def skew(
        self,
        ref: str,
        *,
        scope: str = "fleet",
        since: float | None = None,
        limit: int = 1000,
    ) -> dict[str, Any]:
        """Production skew of ``ref`` in ``scope`` (docs/monitoring.md, "Skew").

        ``agreement``: the newest ``limit`` samples (device time ``ts >= since``) re-run
        through the version's float model (variant ``original``) against the devices'
        outputs, overall, per variant and per device. ``accuracy``: the newest ``limit``
        labelled samples against the offline test accuracy. ``outliers``: each device's
        merged windows (``end >= since``) of each variant against the merge of the other
        devices of the scope. A part that cannot be computed is ``None`` (``outliers``
        empty) with a one-line reason in ``reasons``.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput(f"limit is a number of samples, 1 or more; got {limit!r}")
        mv = self.ws.registry.get_version(ref)
        devices = self.devices_in(scope)
        agree, why_agree = self._agreement(mv, devices, since, limit)
        acc, why_acc = self._accuracy(mv, devices, since, limit)
        outliers, why_out = self._outliers(mv, devices, since)
        return {
            "model": mv.ref,
            "scope": scope,
            "since": since,
            "limit": limit,
            "agreement": agree,
            "accuracy": acc,
            "outliers": outliers,
            "reasons": {"agreement": why_agree, "accuracy": why_acc, "outliers": why_out},
        }

    def _samples(
        self, mv: Any, devices: list[str] | None, since: float | None, limit: int, labelled: bool
    ) -> list[Sample]:
        """The newest ``limit`` samples of ``mv`` from ``devices`` (None: every device)."""
        if devices is not None and not devices:
            return []
        q = self.store._samples_query(mv.ref, None, since, None)
        if devices is not None:
            q = q.where(Sample.device_id.in_(devices))
        if labelled:
            q = q.where(Sample.label.is_not(None))
        q = q.order_by(Sample.ts.desc(), Sample.id.desc()).limit(limit)
        with self.ws.db.session() as s:
            return list(s.execute(q).scalars())

    def _float_model(self, mv: Any) -> tuple[Any, dict[str, Any] | None, str | None]:
        """``(trained, {"format", "kind"}, None)``, or ``(None, None, reason)``."""
        from ..model_io import FLAVOR_OF_FORMAT
        from ..pipeline.spec import KERAS_KINDS, SKLEARN_KINDS
        from ..pipeline.trainers import load_trained

        original = next((v for v in mv.variants if v.name == "original"), None)
        fmt = original.format if original is not None else None
        flavor = FLAVOR_OF_FORMAT.get(fmt or "")
        kinds = {"sklearn": SKLEARN_KINDS, "keras": KERAS_KINDS}.get(flavor or "")
        if original is None or kinds is None:
            return (
                None,
                None,
                f"{mv.ref} has no float model to re-run samples through (its original is "
                f"{fmt or 'missing'}); register a skops or keras model as its original",
            )
        # pipeline versions name their kind (variant meta, run tags); one registered by hand
        # does not, and then the format alone says which loader it needs
        run_tags = mv.run.tags if mv.run is not None else {}
        kind = original.meta.get("model_kind") or (run_tags or {}).get("model_kind")
        known = kind if kind in kinds else None
        try:
            data = self.ws.registry.variant_bytes(mv.ref, "original")
            trained = load_trained(known or kinds[0], data, mv.params)
        except EdgeopsError as exc:
            return None, None, f"the float model of {mv.ref} cannot be loaded: {exc}"
        if flavor == "sklearn" and not hasattr(trained.model, "predict_proba"):
            return (
                None,
                None,
                f"the float model of {mv.ref} ({type(trained.model).__name__}) gives no class "
                "scores (predict_proba); register a classifier that does",
            )
        return trained, {"format": fmt, "kind": known}, None

    def _agreement(
        self, mv: Any, devices: list[str] | None, since: float | None, limit: int
    ) -> tuple[dict[str, Any] | None, str | None]:
        rows = self._samples(mv, devices, since, limit, labelled=False)
        if not rows:
            return None, (
                f"no samples of {mv.ref} in scope; turn sampling on in the deployment "
                "(serving.sampling) or look further back"
            )
        trained, about, why = self._float_model(mv)
        if trained is None:
            return None, why
        n_in, usable, dev, srv_all = _rescore(trained, mv, rows)
        pos = {k: j for j, k in enumerate(usable)}

        def part(members: list[int]) -> dict[str, Any]:
            idx = [pos[k] for k in members if k in pos]
            return {
                **agreement(dev[idx], srv_all[idx]).to_dict(),
                "unusable": len(members) - len(idx),
            }

        offline = {v.name: _share(v.metrics.get("agreement")) for v in mv.variants}
        by_variant: dict[str, list[int]] = {}
        by_device: dict[str, list[int]] = {}
        for k, r in enumerate(rows):
            by_variant.setdefault(r.variant, []).append(k)
            by_device.setdefault(r.device_id, []).append(k)
        return {
            "float_model": about,
            "inputs": n_in,
            "samples": len(rows),
            "unusable": len(rows) - len(usable),
            "overall": part(list(range(len(rows)))),
            "variants": {
                v: {**part(by_variant[v]), "offline_agreement": offline.get(v)}
                for v in sorted(by_variant)
            },
            "devices": {d: part(by_device[d]) for d in sorted(by_device)},
        }, None

    def _accuracy(
        self, mv: Any, devices: list[str] | None, since: float | None, limit: int
    ) -> tuple[dict[str, Any] | None, str | None]:
        rows = self._samples(mv, devices, since, limit, labelled=True)
        if not rows:
            return None, (
                f"no labelled samples of {mv.ref} in scope; label some with "
                "`edgeops labels add` or the API"
            )
        version_acc = _share(mv.metrics.get("accuracy"))
        variant_acc = {v.name: _share(v.metrics.get("accuracy")) for v in mv.variants}

        def part(members: list[Sample]) -> dict[str, Any]:
            names = {r.variant for r in members}
            offline = version_acc
            if len(names) == 1 and variant_acc.get(next(iter(names))) is not None:
                offline = variant_acc[next(iter(names))]
            pairs = [(r.predicted, r.label) for r in members]
            if offline is None:  # nothing to compare with: the on-device side only
                d = on_device_accuracy(pairs, 0.0).to_dict()
                d.update(offline_accuracy=None, outside=None, direction=None, shortfall=None)
                return d
            return on_device_accuracy(pairs, offline).to_dict()

        by_variant: dict[str, list[Sample]] = {}
        by_device: dict[str, list[Sample]] = {}
        for r in rows:
            by_variant.setdefault(r.variant, []).append(r)
            by_device.setdefault(r.device_id, []).append(r)
        return {
            "labelled": len(rows),
            "overall": part(rows),
            "variants": {v: part(by_variant[v]) for v in sorted(by_variant)},
            "devices": {d: part(by_device[d]) for d in sorted(by_device)},
        }, None

    def _outliers(
        self, mv: Any, devices: list[str] | None, since: float | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        from edgeops_protocol.stats import merge_windows

        variants = self._variants(mv, None)
        if not variants:
            return [], f"{mv.ref} has no variant with a baseline to count windows over"
        out: list[dict[str, Any]] = []
        grouped = 0
        for v in variants:
            by_device: dict[str, list[dict[str, Any]]] = {}
            for w in self._windows(mv, v.name, devices, since, None):
                by_device.setdefault(w.device_id, []).append(w.stats)
            grouped = max(grouped, len(by_device))
            merged = {d: merge_windows(stats) for d, stats in by_device.items()}
            for r in group_outliers(merged, v.meta["baseline"]):
                out.append(
                    {
                        "device": r.device,
                        "variant": v.name,
                        "samples": r.samples,
                        "outlier": r.outlier,
                        "flagged": list(r.flagged),
                        "p": r.min_p_adjusted,
                        "psi": {t.name: t.psi for t in r.tests if t.name in r.flagged},
                    }
                )
        if out:
            out.sort(key=lambda o: (o["p"], o["variant"], o["device"]))
            return out, None
        if grouped < 2:
            return [], "fewer than two devices with telemetry in scope: no group to compare with"
        return [], "no device in scope has 200 predictions of one variant yet"

    # --- alerts --------------------------------------------------------------------------
    def observations(
        self,
        ref: str,
        scopes: list[str] | None = None,
        min_count: int = DEFAULT_MIN_COUNT,
        rules: Iterable[AlertRule] = DEFAULT_RULES,
    ) -> list[Observation]:
        """What the alert rules judge, recomputed from the stored data at every call
        (docs/monitoring.md, "Alerts"): the alert engine keeps no history of its own, so
        each metric comes with its recent past here.

        * Drift (every drift metric, per scope and variant): the drift rule at each of the
          last :data:`HISTORY` windows of a ``device:ID`` scope, and at each of the last
          :data:`HISTORY` time slices of a group scope (``fleet``, ``tag:T``), a slice being
          the windows of all the group's devices over about one reporting period
          (:func:`~edgeops.monitoring.drift.time_slices`).
        * Skew, for the skew metrics that have a rule in ``rules``: ``agreement`` and
          ``accuracy_shortfall`` per scope and variant on the newest consecutive batches of
          samples (by device time ``ts``), each batch the rule's ``min_samples``;
          ``group_p_adjusted`` of each device against the rest of the fleet, on each of the
          latest fleet slices merged with the one before it (only when ``fleet`` is a scope).
          As many batches or slices as the rule's ``open_after`` and ``clear_after`` need.
        """
        mv = self.ws.registry.get_version(ref)
        if scopes is None:
            scopes = ["fleet", *(f"device:{d.device_id}" for d in self.fleet.devices())]
        members = self._members(scopes)
        by_metric = {r.metric: r for r in rules}
        obs = self._window_observations(mv, members, min_count, by_metric.get("group_p_adjusted"))
        try:
            obs.extend(self._agreement_observations(mv, members, by_metric.get("agreement")))
        except (EdgeopsError, ValueError) as exc:  # a float model that cannot score the samples
            log.warning("%s: no agreement observations: %s", mv.ref, exc)
        obs.extend(self._accuracy_observations(mv, members, by_metric.get("accuracy_shortfall")))
        return obs

    def _members(self, scopes: list[str]) -> dict[str, set[str] | None]:
        """Each scope's device ids (None: every device), from one read of the fleet."""
        devices = None
        out: dict[str, set[str] | None] = {}
        for scope in scopes:
            if scope == "fleet":
                out[scope] = None
                continue
            if devices is None:
                devices = self.fleet.devices()
            sel = Selector.parse(scope)
            out[scope] = {d.device_id for d in devices if sel.matches(d.device_id, all_tags(d))}
        return out

    def _window_index(self, mv: Any, variant: str) -> list[dict[str, Any]]:
        """``id``, ``device``, ``start``, ``end`` and ``count`` of the newest
        :data:`WINDOWS_PER_DEVICE` windows of each device, oldest first; the statistics
        are read later, for the windows the rules use (:meth:`_window_stats`)."""
        t = TelemetryWindow
        rank = (
            func.row_number()
            .over(partition_by=t.device_id, order_by=(t.end.desc(), t.id.desc()))
            .label("rank")
        )
        inner = (
            select(t.id, t.device_id, t.start, t.end, t.count, rank)
            .where(t.fleet == self.store.fleet, t.model_ref == mv.ref, t.variant == variant)
            .subquery()
        )
        c = inner.c
        q = (
            select(c["id"], c["device_id"], c["start"], c["end"], c["count"])
            .where(c["rank"] <= WINDOWS_PER_DEVICE)
            .order_by(c["end"], c["id"])
        )
        with self.ws.db.session() as s:
            return [
                {"id": i, "device": d, "start": float(a), "end": float(b), "count": int(n)}
                for i, d, a, b, n in s.execute(q)
            ]

    def _window_stats(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        wanted = sorted(set(ids))
        out: dict[int, dict[str, Any]] = {}
        with self.ws.db.session() as s:
            for k in range(0, len(wanted), 500):
                q = select(TelemetryWindow.id, TelemetryWindow.stats).where(
                    TelemetryWindow.id.in_(wanted[k : k + 500])
                )
                out.update({i: st for i, st in s.execute(q)})
        return out

    def _window_observations(
        self,
        mv: Any,
        members: dict[str, set[str] | None],
        min_count: int,
        group_rule: AlertRule | None,
    ) -> list[Observation]:
        """Drift per scope and variant; ``group_p_adjusted`` per device of the fleet."""
        from edgeops_protocol.stats import merge_windows

        obs: list[Observation] = []
        for v in self._variants(mv, None):
            baseline = v.meta["baseline"]
            index = self._window_index(mv, v.name)
            if not index:
                continue
            per_device = Counter(r["device"] for r in index)
            # a device whose windows were cut at WINDOWS_PER_DEVICE: a group's slices start
            # after its oldest window read, so that no slice lacks any of its windows
            oldest: dict[str, float] = {}
            for r in index:
                if per_device[r["device"]] >= WINDOWS_PER_DEVICE:
                    oldest.setdefault(r["device"], r["end"])
            # (scope, at, windows: device scopes) or (scope, at, slices: group scopes)
            points: list[tuple[str, float, list[list[dict[str, Any]]], bool]] = []
            group: list[tuple[float, list[dict[str, Any]]]] = []
            for scope, devs in members.items():
                rows = [r for r in index if devs is None or r["device"] in devs]
                if not rows:
                    continue
                if scope.startswith("device:"):
                    for k in range(max(0, len(rows) - HISTORY), len(rows)):
                        upto = rows[: k + 1]
                        if sum(r["count"] for r in upto) < min_count:
                            continue
                        points.append((scope, rows[k]["end"], [_latest(upto, 2 * min_count)], True))
                    continue
                cut = max(
                    (oldest[d] for d in {r["device"] for r in rows} if d in oldest), default=None
                )
                if cut is not None:
                    rows = [r for r in rows if r["end"] > cut]
                slices = time_slices(rows, min_count)
                full = [
                    j for j, sl in enumerate(slices) if sum(r["count"] for r in sl) >= min_count
                ]
                for j in full[-HISTORY:]:
                    parts = slices[max(0, j - 1) : j + 1]
                    points.append((scope, slices[j][-1]["end"], parts, False))
                if scope == "fleet" and group_rule is not None:
                    need = max(group_rule.open_after, group_rule.clear_after)
                    for j in full[-need:]:
                        span = [r for sl in slices[max(0, j - 1) : j + 1] for r in sl]
                        group.append((slices[j][-1]["end"], span))
            stats = self._window_stats(
                [r["id"] for *_, parts, _ in points for p in parts for r in p]
                + [r["id"] for _, span in group for r in span]
            )
            for scope, at, parts, device in points:
                if device:
                    det = detect(baseline, [stats[r["id"]] for r in parts[0]], min_count=min_count)
                else:
                    merged = [merge_windows([stats[r["id"]] for r in p]) for p in parts]
                    det = detect(baseline, merged)
                obs.extend(det.observations(f"{scope}/{v.name}", at))
            for at, span in group:
                by_device: dict[str, list[dict[str, Any]]] = {}
                for r in span:
                    by_device.setdefault(r["device"], []).append(stats[r["id"]])
                merged_by_device = {d: merge_windows(w) for d, w in by_device.items()}
                for dev_skew in group_outliers(merged_by_device, baseline):
                    obs.extend(
                        replace(o, scope=f"{o.scope}/{v.name}") for o in dev_skew.observations(at)
                    )
        return obs

    def _newest_samples(self, mv: Any, per: int, labelled: bool) -> list[Any]:
        """The newest ``per`` samples of each device and variant of ``mv`` (only labelled
        ones with ``labelled``), oldest first: every scope's newest ``per`` samples of a
        variant are among them."""
        cols = [Sample.id, Sample.device_id, Sample.variant, Sample.ts]
        cols += [Sample.predicted, Sample.label] if labelled else [Sample.features, Sample.outputs]
        rank = (
            func.row_number()
            .over(
                partition_by=(Sample.device_id, Sample.variant),
                order_by=(Sample.ts.desc(), Sample.id.desc()),
            )
            .label("rank")
        )
        q = select(*cols, rank).where(Sample.fleet == self.store.fleet, Sample.model_ref == mv.ref)
        if labelled:
            q = q.where(Sample.label.is_not(None))
        c = q.subquery().c
        outer = (
            select(*(c[col.key] for col in cols)).where(c["rank"] <= per).order_by(c["ts"], c["id"])
        )
        with self.ws.db.session() as s:
            return list(s.execute(outer))

    def _agreement_observations(
        self, mv: Any, members: dict[str, set[str] | None], rule: AlertRule | None
    ) -> list[Observation]:
        """``agreement`` per scope and variant, on batches of ``rule.min_samples`` samples."""
        if rule is None:
            return []
        size, need = max(1, rule.min_samples), max(rule.open_after, rule.clear_after)
        rows = self._newest_samples(mv, size * need, labelled=False)
        if not rows:
            return []
        trained, _, why = self._float_model(mv)  # loaded once for every scope
        if trained is None:
            log.debug("%s: no agreement observations: %s", mv.ref, why)
            return []
        _, usable, dev, srv = _rescore(trained, mv, rows)
        scored = [(rows[k], j) for j, k in enumerate(usable)]
        obs: list[Observation] = []
        for scope, devs in members.items():
            by_variant: dict[str, list[tuple[Any, int]]] = {}
            for r, j in scored:
                if devs is None or r.device_id in devs:
                    by_variant.setdefault(r.variant, []).append((r, j))
            for variant in sorted(by_variant):
                for batch in _batches(by_variant[variant], size, need):
                    idx = [j for _, j in batch]
                    a = agreement(dev[idx], srv[idx])
                    obs.extend(a.observations(f"{scope}/{variant}", float(batch[-1][0].ts)))
        return obs

    def _accuracy_observations(
        self, mv: Any, members: dict[str, set[str] | None], rule: AlertRule | None
    ) -> list[Observation]:
        """``accuracy_shortfall`` (offline accuracy less the upper end of the 95 % Wilson
        interval) per scope and variant, on batches of ``rule.min_samples`` labels."""
        if rule is None:
            return []
        size, need = max(1, rule.min_samples), max(rule.open_after, rule.clear_after)
        rows = self._newest_samples(mv, size * need, labelled=True)
        version_acc = _share(mv.metrics.get("accuracy"))
        offline = {v.name: _share(v.metrics.get("accuracy")) for v in mv.variants}
        obs: list[Observation] = []
        for scope, devs in members.items():
            by_variant: dict[str, list[Any]] = {}
            for r in rows:
                if devs is None or r.device_id in devs:
                    by_variant.setdefault(r.variant, []).append(r)
            for variant in sorted(by_variant):
                acc = offline.get(variant)
                acc = version_acc if acc is None else acc
                if acc is None:  # nothing recorded to compare with
                    continue
                for batch in _batches(by_variant[variant], size, need):
                    skew = on_device_accuracy([(r.predicted, r.label) for r in batch], acc)
                    obs.extend(skew.observations(f"{scope}/{variant}", float(batch[-1].ts)))
        return obs

    def evaluate_alerts(
        self,
        ref: str,
        rules: tuple[AlertRule, ...] = DEFAULT_RULES,
        scopes: list[str] | None = None,
    ) -> list[AlertChange]:
        """Open and close alert records for ``ref``; the changes made."""
        mv = self.ws.registry.get_version(ref)
        obs = self.observations(mv.ref, scopes, rules=rules)
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


def _numbers(values: Any, n: int) -> bool:
    """``values`` is a list of ``n`` finite numbers (``n`` >= 1)."""
    return (
        n >= 1
        and isinstance(values, list)
        and len(values) == n
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values)
        and all(math.isfinite(x) for x in values)
    )


def _share(value: Any) -> float | None:
    """A recorded accuracy as a share between 0 and 1 (None when it is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0.0 <= value <= 1.0 else None


def _n_inputs(trained: Any, mv: Any) -> int | None:
    """How many inputs the float model takes: the model's own, else the registered features."""
    if trained.flavor == "sklearn":
        n = getattr(trained.model, "n_features_in_", None)
    else:
        inputs = getattr(trained.model, "inputs", None) or []
        n = inputs[0].shape[-1] if len(inputs) == 1 else None
    if isinstance(n, int) and n > 0:
        return n
    for v in mv.variants:
        names = v.meta.get("feature_names") or (v.meta.get("baseline") or {}).get("features")
        if names:
            return len(names)
    return None


def _batches(items: list[Any], size: int, count: int) -> list[list[Any]]:
    """The newest ``count`` consecutive batches of ``size`` of ``items`` (oldest first), oldest
    batch first; older items that do not fill a batch are left out."""
    out = []
    end = len(items)
    while len(out) < count and end >= size:
        out.append(items[end - size : end])
        end -= size
    return out[::-1]


def _rescore(trained: Any, mv: Any, rows: list[Any]) -> tuple[int, list[int], Any, Any]:
    """Re-run the sampled ``features`` of ``rows`` through the float model.

    ``(inputs, usable, device, server)``: the model's number of inputs, the indices of the
    rows whose features and outputs fit the model, and their device and server scores (one
    row each; a single sigmoid output ``p`` of the device as ``(1 - p, p)``).
    """
    n_in = _n_inputs(trained, mv) or _commonest_length(rows)
    fits = [k for k, r in enumerate(rows) if _numbers(r.features, n_in)]
    n_out = 0
    server = np.zeros((0, 0))
    if fits:
        server = np.asarray(
            trained.scores(np.asarray([rows[k].features for k in fits], dtype=np.float64)),
            dtype=np.float64,
        ).reshape(len(fits), -1)
        n_out = server.shape[1]
    usable: list[int] = []
    dev_rows: list[list[float]] = []
    srv_rows: list[np.ndarray] = []
    for k, srv in zip(fits, server, strict=True):
        out = rows[k].outputs
        if _numbers(out, n_out):
            dev_rows.append([float(x) for x in out])
        elif n_out == 2 and _numbers(out, 1):  # one sigmoid score p, as (1 - p, p)
            dev_rows.append([1.0 - float(out[0]), float(out[0])])
        else:
            continue
        usable.append(k)
        srv_rows.append(srv)
    dev = np.asarray(dev_rows, dtype=np.float64).reshape(len(usable), n_out)
    srv_all = np.asarray(srv_rows, dtype=np.float64).reshape(len(usable), n_out)
    return n_in, usable, dev, srv_all


def _commonest_length(rows: list[Any]) -> int:
    lengths = Counter(len(r.features) for r in rows if isinstance(r.features, list) and r.features)
    return max(lengths, key=lambda n: (lengths[n], n)) if lengths else 0
