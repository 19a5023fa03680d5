"""Drift of merged statistics windows against a model variant's baseline profile.

A window (``edgeops_protocol.stats``) holds counts over the baseline's bins, so
any set of windows (one device, a tag group, the fleet; any time range) merges
by adding (:func:`merge_scope`) and is compared here bin by bin with the
baseline (``edgeops_protocol.baseline``):

* per input feature, the confidence histogram and the predicted classes:
  PSI, Jensen-Shannon distance, KS on the binned CDFs (not for classes), and a
  chi-square test that window and baseline are samples of one distribution
  (:func:`~edgeops.monitoring.metrics.chi_square_2sample`: the baseline is a
  sample of training rows, so its noise counts too);
* sample counts, error rate, non-finite output rate, non-finite inputs per
  feature, and latency p50/p95 estimated from the latency histogram
  (:func:`histogram_quantile`).

Sparse bins are merged before testing (:func:`~edgeops.monitoring.metrics.coarsen_bins`,
so every cell expects about :data:`MIN_EXPECTED` values or more); the distances
use the baseline's bins as they are.

A report's p-values are Bonferroni-adjusted over the distributions it tests
(:meth:`DriftReport.p_adjusted`). The drift rule (docs/monitoring.md,
:func:`detect`) runs after every window: the last window alone and the last two
merged, each at ``alpha / 2``; a distribution is flagged when either adjusted
p-value is below that. So with no drift the rule flags anything with
probability at most :data:`DEFAULT_ALPHA`, however many features the model has.

>>> base = {"rows": 100, "features": [{"name": "x", "edges": [0.0, 1.0, 2.0],
...          "counts": [0, 50, 50, 0]}],
...         "outputs": {"labels": ["a", "b"], "class_counts": [50, 50],
...                     "confidence_edges": [0.0, 0.5, 1.0], "confidence_counts": [0, 50, 50, 0]}}
>>> win = {"format": 1, "count": 100, "errors": 0, "non_finite_outputs": 0,
...        "features": [[0, 10, 90, 0]], "feature_non_finite": [0],
...        "class_counts": [50, 50], "confidence_counts": [0, 50, 50, 0],
...        "latency_counts": [0, 0, 0, 0, 0, 0, 100] + [0] * 9,
...        "latency_sum_ms": 150.0, "latency_max_ms": 1.9}
>>> r = drift_report(base, win)
>>> x = r.features[0]
>>> round(x.psi, 3), round(x.ks, 2), x.chi2.dof, x.chi2.p_value < 1e-9
(0.879, 0.4, 1, True)
>>> [f.name for f in r.flagged()], r.latency_p50_ms
(['x'], 1.45)
>>> [f.name for f in detect(base, [win, win]).flagged()]
['x']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import numpy as np

from edgeops.errors import InvalidInput
from edgeops_protocol.baseline import CONFIDENCE_EDGES
from edgeops_protocol.stats import LATENCY_EDGES_MS, STATS_FORMAT, merge_windows

from .alerts import Observation
from .metrics import (
    ChiSquare,
    Counts,
    chi_square_2sample,
    coarsen_bins,
    js_distance,
    ks_binned,
    psi,
    psi_threshold,
    regroup,
)

__all__ = [
    "DEFAULT_ALPHA",
    "MIN_EXPECTED",
    "Detection",
    "DistributionDrift",
    "DriftReport",
    "compare_counts",
    "detect",
    "drift_report",
    "histogram_quantile",
    "merge_scope",
    "reporting_period",
    "select_windows",
    "time_slices",
]

DEFAULT_ALPHA = 0.005  # chance that the drift rule flags anything when nothing drifted
MIN_EXPECTED = 5.0  # smallest expected count per cell for the chi-square approximation


@dataclass(frozen=True)
class DistributionDrift:
    """One distribution (a feature, the classes or the confidence) against its baseline.

    ``samples`` are the window's finite values; ``reference`` the baseline's.
    Distances are ``None`` when the window has no values; ``ks`` is ``None`` for
    unordered classes. ``psi_critical``, filled in by :func:`drift_report`, is the
    PSI the window would exceed with probability ``alpha / tested`` under no
    drift (:func:`~edgeops.monitoring.metrics.psi_threshold` on the tested bins).
    """

    name: str
    kind: str  # "feature", "classes" or "confidence"
    samples: int
    reference: int
    psi: float | None
    js: float | None
    ks: float | None
    chi2: ChiSquare | None
    non_finite: int = 0
    psi_critical: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "samples": self.samples,
            "reference": self.reference,
            "non_finite": self.non_finite,
            "psi": self.psi,
            "psi_critical": self.psi_critical,
            "js": self.js,
            "ks": self.ks,
            "chi2": self.chi2.to_dict() if self.chi2 else None,
        }


def compare_counts(
    name: str,
    kind: str,
    reference: Counts,
    counts: Counts,
    *,
    ordered: bool = True,
    non_finite: int = 0,
    min_expected: float = MIN_EXPECTED,
) -> DistributionDrift:
    """Distances and the chi-square test of ``counts`` against ``reference`` (same bins).

    Ordered histograms have sparse bins merged with their neighbours before the
    test, so each cell expects ``min_expected`` values or more; unordered ones
    (classes) only lose the bins empty in both.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cnt = np.asarray(counts, dtype=np.float64)
    if ref.size != cnt.size:
        raise InvalidInput(
            f"{name}: the window has {cnt.size} bins and the baseline {ref.size}; "
            "compare windows with the baseline of the variant that produced them"
        )
    n, n_ref = int(cnt.sum()), int(ref.sum())
    if n == 0 or n_ref == 0:
        return DistributionDrift(name, kind, n, n_ref, None, None, None, None, non_finite)
    if ordered:
        groups = coarsen_bins(ref, min_expected / min(n, n_ref))
        test = chi_square_2sample(regroup(ref, groups), regroup(cnt, groups))
    else:
        test = chi_square_2sample(ref, cnt)
    return DistributionDrift(
        name,
        kind,
        n,
        n_ref,
        psi(ref, cnt),
        js_distance(ref, cnt),
        ks_binned(ref, cnt) if ordered else None,
        test,
        non_finite,
    )


def histogram_quantile(
    counts: Counts,
    edges: Sequence[float],
    q: float,
    max_value: float | None = None,
) -> float | None:
    """The ``q``-quantile of values counted over ``edges``, by linear interpolation in a bin.

    With ``N`` values, the rank ``q * N`` falls in the first bin ``[lo, hi]``
    whose cumulative count reaches it; the estimate is
    ``lo + (hi - lo) * (rank - below) / count`` with ``below`` the count before
    that bin, i.e. values are taken as spread evenly over their bin (as
    Prometheus' ``histogram_quantile``). ``max_value``, the largest value seen,
    caps ``hi`` and is the upper end of the overflow bin; without it the
    overflow bin gives ``edges[-1]``. The underflow bin gives ``edges[0]``.
    ``None`` when there are no values.

    >>> histogram_quantile([0, 10, 10, 0], [0.0, 1.0, 2.0], 0.5)
    1.0
    >>> histogram_quantile([0, 0, 4, 0], [0.0, 1.0, 2.0], 0.5, max_value=1.5)
    1.25
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be between 0 and 1")
    c = np.asarray(counts, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    if c.size != e.size + 1:
        raise ValueError(f"{e.size} edges need {e.size + 1} counts, got {c.size}")
    total = c.sum()
    if total <= 0:
        return None
    rank = q * total
    cum = np.cumsum(c)
    b = int(np.searchsorted(cum, rank, side="left"))
    while c[b] == 0:  # rank 0 lands before the first value: use the first non-empty bin
        b += 1
    if b == 0:
        return float(e[0])
    lo = float(e[b - 1])
    if b == e.size:
        hi = max(lo, max_value) if max_value is not None else lo
    else:
        hi = float(e[b])
        if max_value is not None and lo <= max_value < hi:
            hi = max_value
    below = float(cum[b - 1])
    return float(lo + (hi - lo) * (rank - below) / float(c[b]))


@dataclass(frozen=True)
class DriftReport:
    """Everything :func:`drift_report` measured on one (merged) window."""

    count: int
    errors: int
    non_finite_outputs: int
    features: tuple[DistributionDrift, ...]
    classes: DistributionDrift
    confidence: DistributionDrift
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_mean_ms: float | None
    latency_max_ms: float | None
    alpha: float = DEFAULT_ALPHA
    tested: int = 0  # distributions with a chi-square test (the Bonferroni factor)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.count if self.count else None

    @property
    def non_finite_rate(self) -> float | None:
        return self.non_finite_outputs / self.count if self.count else None

    def distributions(self) -> list[DistributionDrift]:
        """Features, then classes, then confidence."""
        return [*self.features, self.classes, self.confidence]

    def p_adjusted(self, d: DistributionDrift) -> float | None:
        """Bonferroni-adjusted p-value of ``d``: ``min(1, p * tested)``."""
        if d.chi2 is None or d.chi2.dof < 1:
            return None
        return min(1.0, d.chi2.p_value * max(1, self.tested))

    def flagged(self, alpha: float | None = None) -> list[DistributionDrift]:
        """Distributions whose adjusted p-value is below ``alpha`` (default: the report's)."""
        a = self.alpha if alpha is None else alpha
        out = []
        for d in self.distributions():
            p = self.p_adjusted(d)
            if p is not None and p < a:
                out.append(d)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values for the API and the CLI."""

        def one(d: DistributionDrift) -> dict[str, Any]:
            return {**d.to_dict(), "p_adjusted": self.p_adjusted(d)}

        return {
            "count": self.count,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "non_finite_outputs": self.non_finite_outputs,
            "non_finite_rate": self.non_finite_rate,
            "features": [one(d) for d in self.features],
            "outputs": {"classes": one(self.classes), "confidence": one(self.confidence)},
            "latency_ms": {
                "p50": self.latency_p50_ms,
                "p95": self.latency_p95_ms,
                "mean": self.latency_mean_ms,
                "max": self.latency_max_ms,
            },
            "alpha": self.alpha,
            "tested": self.tested,
            "flagged": [d.name for d in self.flagged()],
        }


def _check_window(window: Mapping[str, Any]) -> None:
    if window.get("format") != STATS_FORMAT:
        raise InvalidInput(
            f"statistics window format {window.get('format')!r} is not {STATS_FORMAT}; "
            "upgrade edgeops to read it"
        )


def drift_report(
    baseline: Mapping[str, Any],
    window: Mapping[str, Any],
    alpha: float = DEFAULT_ALPHA,
) -> DriftReport:
    """Compare a (merged) statistics window with the variant's baseline profile.

    ``alpha`` is the report's family-wise level for :meth:`DriftReport.flagged`;
    ``psi_critical`` of each distribution is taken at ``alpha / tested``.
    """
    _check_window(window)
    feats = list(baseline.get("features", []))
    if len(feats) != len(window["features"]):
        raise InvalidInput(
            f"the window has {len(window['features'])} features and the baseline {len(feats)}; "
            "compare windows with the baseline of the variant that produced them"
        )
    non_finite = list(window.get("feature_non_finite", [0] * len(feats)))
    features = [
        compare_counts(str(f["name"]), "feature", f["counts"], counts, non_finite=int(nf))
        for f, counts, nf in zip(feats, window["features"], non_finite, strict=True)
    ]
    outputs = baseline.get("outputs", {})
    ref_classes = list(outputs.get("class_counts", []))
    classes = compare_counts(
        "classes", "classes", ref_classes, window["class_counts"][: len(ref_classes)], ordered=False
    )
    ref_conf = outputs.get("confidence_counts") or [0] * (len(CONFIDENCE_EDGES) + 1)
    confidence = compare_counts("confidence", "confidence", ref_conf, window["confidence_counts"])
    dists = [*features, classes, confidence]
    tested = sum(1 for d in dists if d.chi2 is not None and d.chi2.dof >= 1)
    if tested:
        dists = [_with_critical(d, alpha / tested) for d in dists]
    count = int(window["count"])
    lat = window["latency_counts"]
    lat_max = float(window["latency_max_ms"]) if count else None
    return DriftReport(
        count=count,
        errors=int(window["errors"]),
        non_finite_outputs=int(window["non_finite_outputs"]),
        features=tuple(dists[: len(features)]),
        classes=dists[-2],
        confidence=dists[-1],
        latency_p50_ms=histogram_quantile(lat, LATENCY_EDGES_MS, 0.5, lat_max),
        latency_p95_ms=histogram_quantile(lat, LATENCY_EDGES_MS, 0.95, lat_max),
        latency_mean_ms=float(window["latency_sum_ms"]) / count if count else None,
        latency_max_ms=lat_max,
        alpha=alpha,
        tested=tested,
    )


def _with_critical(d: DistributionDrift, alpha: float) -> DistributionDrift:
    if d.chi2 is None or d.chi2.dof < 1:
        return d
    crit = psi_threshold(d.samples, d.reference, d.chi2.dof + 1, alpha)
    return replace(d, psi_critical=crit)


def _latest(windows: Sequence[Mapping[str, Any]], min_count: int) -> list[Mapping[str, Any]]:
    """The fewest latest windows holding ``min_count`` predictions (all if they hold fewer)."""
    total, first = 0, len(windows)
    while first > 0 and total < min_count:
        first -= 1
        total += int(windows[first]["count"])
    return list(windows[first:])


@dataclass(frozen=True)
class Detection:
    """The drift rule's verdict after a window: two reports, each tested at ``alpha / 2``.

    ``latest`` covers the last window, ``recent`` the last two merged. A
    distribution's rule p-value is ``min(1, 2 * min(p_latest, p_recent))`` of the
    reports' Bonferroni-adjusted p-values, and it is flagged when that is below
    ``alpha``: so without drift the rule flags anything with probability at most
    ``alpha``, however many features the model has.
    """

    latest: DriftReport
    recent: DriftReport
    alpha: float = DEFAULT_ALPHA

    def p_rule(self) -> list[tuple[DistributionDrift, float | None]]:
        """Each distribution (as in ``recent``) with its rule p-value (``None``: untested)."""
        out = []
        for a, b in zip(self.latest.distributions(), self.recent.distributions(), strict=True):
            ps = [
                p for p in (self.latest.p_adjusted(a), self.recent.p_adjusted(b)) if p is not None
            ]
            out.append((b, min(1.0, 2.0 * min(ps)) if ps else None))
        return out

    def flagged(self) -> list[DistributionDrift]:
        """The distributions whose rule p-value is below ``alpha`` (empty: no drift)."""
        return [d for d, p in self.p_rule() if p is not None and p < self.alpha]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: both reports, each distribution's rule p-value, the verdict."""
        return {
            "alpha": self.alpha,
            "flagged": [d.name for d in self.flagged()],
            "p_rule": [{"name": d.name, "kind": d.kind, "p": p} for d, p in self.p_rule()],
            "latest": self.latest.to_dict(),
            "recent": self.recent.to_dict(),
        }

    def observations(self, scope: str, at: float) -> list[Observation]:
        """Metric values for the alert rules (:mod:`edgeops.monitoring.alerts`).

        Per distribution (subject: the feature name, ``class`` or ``confidence``):
        ``p_adjusted`` (the rule p-value, so the default rule ``p_adjusted < 0.005``
        is this rule) and ``psi``, ``js``, ``ks`` of ``recent``; for subject
        ``predictions``: ``error_rate``, ``non_finite_rate`` and ``latency_p95_ms``
        of ``recent``.
        """
        obs: list[Observation] = []
        for d, p in self.p_rule():
            subject = {"classes": "class", "confidence": "confidence"}.get(d.kind, d.name)
            values = {"p_adjusted": p, "psi": d.psi, "js": d.js, "ks": d.ks}
            for metric, value in values.items():
                if value is not None:
                    obs.append(Observation(scope, subject, metric, value, d.samples, at))
        r = self.recent
        totals = {
            "error_rate": r.error_rate,
            "non_finite_rate": r.non_finite_rate,
            "latency_p95_ms": r.latency_p95_ms,
        }
        for metric, value in totals.items():
            if value is not None:
                obs.append(Observation(scope, "predictions", metric, value, r.count, at))
        return obs


def detect(
    baseline: Mapping[str, Any],
    windows: Sequence[Mapping[str, Any]],
    alpha: float = DEFAULT_ALPHA,
    min_count: int | None = None,
) -> Detection:
    """The drift rule after the latest of ``windows`` (oldest first): see :class:`Detection`.

    A change that starts at a window boundary is tested after the first changed
    window on that window alone (``latest``) and merged with the unchanged one
    before it (``recent``), and after the second on both changed windows
    merged: one window's data for fast answers on large changes, two windows'
    for small ones. With ``min_count`` (windows closed by time hold any number
    of predictions) ``latest`` is the fewest latest windows holding
    ``min_count`` predictions and ``recent`` those holding ``2 * min_count``.
    """
    if not windows:
        raise InvalidInput("no windows to test")
    if min_count is None:
        latest, recent = list(windows[-1:]), list(windows[-2:])
    else:
        latest, recent = _latest(windows, min_count), _latest(windows, 2 * min_count)
    half = alpha / 2
    return Detection(
        drift_report(baseline, merge_windows(latest), half),
        drift_report(baseline, merge_windows(recent), half),
        alpha,
    )


def select_windows(
    records: Iterable[Mapping[str, Any]],
    *,
    devices: Iterable[str] | None = None,
    since: float | None = None,
    until: float | None = None,
) -> list[Mapping[str, Any]]:
    """The records of ``devices`` (all when ``None``) whose window ended in ``[since, until)``.

    A record is a mapping with ``device``, ``start``, ``end`` and ``stats`` (a
    telemetry message has them). Windows are counted whole, by their end time,
    so adjacent ranges split a stream without counting a window twice. A tag
    group is the list of its devices; the fleet is ``devices=None``.
    """
    wanted = None if devices is None else {str(d) for d in devices}
    out = []
    for r in records:
        if wanted is not None and str(r["device"]) not in wanted:
            continue
        end = float(r["end"])
        if since is not None and end < since:
            continue
        if until is not None and end >= until:
            continue
        out.append(r)
    return out


def merge_scope(
    records: Iterable[Mapping[str, Any]],
    *,
    devices: Iterable[str] | None = None,
    since: float | None = None,
    until: float | None = None,
) -> dict[str, Any] | None:
    """The sum of the selected records' ``stats`` (:func:`select_windows`), ``None`` if none.

    >>> from edgeops_protocol.stats import empty_window
    >>> w = {**empty_window([3], 2), "count": 4}
    >>> recs = [{"device": "a", "start": 0.0, "end": 10.0, "stats": w},
    ...         {"device": "b", "start": 5.0, "end": 20.0, "stats": w}]
    >>> merge_scope(recs)["count"], merge_scope(recs, devices=["b"], until=20.0)
    (8, None)
    """
    chosen = select_windows(records, devices=devices, since=since, until=until)
    if not chosen:
        return None
    stats = [r["stats"] for r in chosen]
    for s in stats:
        _check_window(s)
    try:
        return merge_windows(stats)
    except ValueError as exc:
        raise InvalidInput(f"cannot merge these windows: {exc}; select one model variant") from exc


def _record_count(r: Mapping[str, Any]) -> int:
    return int(r["count"]) if "count" in r else int(r["stats"]["count"])


def reporting_period(records: Iterable[Mapping[str, Any]]) -> float:
    """How often the devices of a group close a window: the median over devices of each
    device's median time between consecutive window ends (a device with one window: that
    window's ``end - start``). ``0.0`` when no device gives a positive time.

    >>> recs = [{"device": d, "start": t - 60, "end": t} for d, t0 in (("a", 0), ("b", 20))
    ...         for t in (t0 + 60, t0 + 120, t0 + 180)]
    >>> reporting_period(recs)
    60.0
    """
    by_device: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_device.setdefault(str(r["device"]), []).append(r)
    periods = []
    for rs in by_device.values():
        ends = sorted(float(r["end"]) for r in rs)
        gaps = [b - a for a, b in pairwise(ends) if b > a]
        if not gaps:
            gaps = [
                float(r["end"]) - float(r["start"])
                for r in rs
                if r.get("start") is not None and float(r["end"]) > float(r["start"])
            ]
        if gaps:
            periods.append(float(np.median(gaps)))
    return float(np.median(periods)) if periods else 0.0


def time_slices(
    records: Iterable[Mapping[str, Any]],
    min_count: int,
    width: float | None = None,
) -> list[list[Mapping[str, Any]]]:
    """A group's windows (``tag:T``, the fleet) as consecutive time slices, oldest first.

    Records are mappings with ``device``, ``end`` (and ``start``) and ``count`` or
    ``stats``, as for :func:`select_windows`. Time is cut into cells of ``width`` seconds
    (default: :func:`reporting_period`, so that a device closes about one window per cell)
    anchored at the newest window end ``T``: cell ``k`` holds the windows whose end lies in
    ``(T - (k + 1) * width, T - k * width]``, each window whole. From the newest cell back,
    cells are joined until a slice holds ``min_count`` predictions; the oldest slice may
    hold fewer. So each slice is the whole group's traffic over a stretch of time, not the
    window of whichever device reported last, and the drift rule's "last window" and "last
    two windows" become the last slice and the last two. With ``width`` 0, every distinct
    end time is a cell of its own.

    >>> recs = [{"device": d, "start": t - 60, "end": t, "count": 100}
    ...         for t0, d in ((0, "a"), (20, "b"), (40, "c")) for t in (t0 + 60, t0 + 120)]
    >>> [[r["device"] for r in s] for s in time_slices(recs, 250)]
    [['a', 'b', 'c'], ['a', 'b', 'c']]
    """
    recs = sorted(records, key=lambda r: float(r["end"]))
    if not recs:
        return []
    newest = float(recs[-1]["end"])
    w = reporting_period(recs) if width is None else float(width)

    def cell(r: Mapping[str, Any]) -> float:
        back = newest - float(r["end"])
        return float(math.floor(back / w)) if w > 0 else back

    slices: list[list[Mapping[str, Any]]] = []
    current: list[Mapping[str, Any]] = []
    count = 0
    current_cell: float | None = None
    for r in reversed(recs):
        c = cell(r)
        if current and c != current_cell and count >= min_count:
            slices.append(current[::-1])
            current, count = [], 0
        current.append(r)
        count += _record_count(r)
        current_cell = c
    if current:
        slices.append(current[::-1])
    return slices[::-1]
