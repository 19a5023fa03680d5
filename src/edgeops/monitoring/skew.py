"""Production skew: where what devices do differs from what the server expects.

Three pure computations, each a function of samples or windows:

* :func:`agreement` -- sampled inputs re-run through the registered float model
  on the server against the device's (quantized) outputs: how often the
  predicted labels agree, and how far the scores are apart;
* :func:`on_device_accuracy` -- accuracy on the labelled samples of a device or
  a group, with a Wilson binomial confidence interval, against the offline test
  accuracy of the same version; flagged when the offline value lies outside it;
* :func:`group_outliers` -- devices whose input and output distributions differ
  from the rest of their group: each device's merged window against the merge
  of all the others, with the two-sample chi-square tests of
  :mod:`edgeops.monitoring.drift`, Bonferroni-corrected over devices and tests.

>>> a = agreement([[0.9, 0.1], [0.4, 0.6]], [[0.8, 0.2], [0.6, 0.4]])
>>> a.n, a.agreeing, round(a.mean_abs_diff, 3)
(2, 1, 0.15)
>>> acc = on_device_accuracy([("walk", "walk")] * 80 + [("walk", "run")] * 20, 0.95)
>>> round(acc.accuracy, 2), acc.outside, acc.direction
(0.8, True, 'worse')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from edgeops.errors import InvalidInput
from edgeops_protocol.baseline import labels_of
from edgeops_protocol.stats import merge_windows

from .alerts import Observation
from .drift import DEFAULT_ALPHA, DistributionDrift, compare_counts

__all__ = [
    "AccuracySkew",
    "Agreement",
    "DeviceSkew",
    "agreement",
    "group_outliers",
    "on_device_accuracy",
    "wilson_interval",
]


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (``(0, 1)`` when ``n`` is 0).

    >>> tuple(round(x, 4) for x in wilson_interval(80, 100))
    (0.7112, 0.8666)
    """
    if not 0 < level < 1:
        raise ValueError("level must be between 0 and 1")
    if n < 0 or not 0 <= successes <= n:
        raise ValueError("need 0 <= successes <= n")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 or n successes one end is exactly 0 or 1; say so instead of rounding near it
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


@dataclass(frozen=True)
class Agreement:
    """Device outputs against the server's float model on the same sampled inputs.

    ``n`` samples, of which ``agreeing`` have the same predicted label; rows
    with non-finite device or server outputs (``non_finite``) count as
    disagreeing and are left out of the score differences.
    """

    n: int
    agreeing: int
    non_finite: int
    mean_abs_diff: float | None
    max_abs_diff: float | None
    ci_low: float
    ci_high: float

    @property
    def rate(self) -> float | None:
        return self.agreeing / self.n if self.n else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "agreeing": self.agreeing,
            "rate": self.rate,
            "ci95": [self.ci_low, self.ci_high],
            "non_finite": self.non_finite,
            "mean_abs_diff": self.mean_abs_diff,
            "max_abs_diff": self.max_abs_diff,
        }

    def observations(self, scope: str, at: float) -> list[Observation]:
        """``agreement`` (the rate) for subject ``outputs``."""
        if self.rate is None:
            return []
        return [Observation(scope, "outputs", "agreement", self.rate, self.n, at)]


def _outputs(values: Sequence[Sequence[float]] | np.ndarray, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be rows of numbers of one length") from exc
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise InvalidInput(f"{what} must be one row of scores per sample")
    return arr


def agreement(
    device_outputs: Sequence[Sequence[float]] | np.ndarray,
    server_outputs: Sequence[Sequence[float]] | np.ndarray,
) -> Agreement:
    """Label agreement and score differences between device and server outputs, row by row.

    Labels are taken as the devices take them (``edgeops_protocol.baseline.labels_of``:
    argmax, or ``p >= 0.5`` for one sigmoid column). The interval is Wilson's at 95 %.
    """
    dev, srv = (
        _outputs(device_outputs, "device outputs"),
        _outputs(server_outputs, "server outputs"),
    )
    if dev.shape != srv.shape:
        raise InvalidInput(
            f"device outputs {dev.shape} and server outputs {srv.shape} differ in shape; "
            "re-run the samples through the version and variant that produced them"
        )
    n = int(dev.shape[0])
    finite = np.all(np.isfinite(dev), axis=1) & np.all(np.isfinite(srv), axis=1)
    agree = 0
    mean_diff = max_diff = None
    if finite.any():
        d, s = dev[finite], srv[finite]
        agree = int(np.count_nonzero(labels_of(d) == labels_of(s)))
        diff = np.abs(d - s)
        mean_diff, max_diff = float(diff.mean()), float(diff.max())
    lo, hi = wilson_interval(agree, n)
    return Agreement(n, agree, int(n - finite.sum()), mean_diff, max_diff, lo, hi)


@dataclass(frozen=True)
class AccuracySkew:
    """On-device accuracy from label feedback against the version's offline test accuracy."""

    labelled: int
    correct: int
    offline_accuracy: float
    ci_low: float
    ci_high: float
    level: float

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def outside(self) -> bool:
        """The offline accuracy lies outside the on-device interval (never with no labels)."""
        return self.labelled > 0 and not self.ci_low <= self.offline_accuracy <= self.ci_high

    @property
    def direction(self) -> str | None:
        """``"worse"`` (devices below offline), ``"better"``, or ``None`` when inside."""
        if not self.outside:
            return None
        return "worse" if self.offline_accuracy > self.ci_high else "better"

    @property
    def shortfall(self) -> float:
        """``offline - ci_high``: positive when the devices are significantly worse."""
        return self.offline_accuracy - self.ci_high

    def to_dict(self) -> dict[str, Any]:
        return {
            "labelled": self.labelled,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "ci": [self.ci_low, self.ci_high],
            "level": self.level,
            "offline_accuracy": self.offline_accuracy,
            "outside": self.outside,
            "direction": self.direction,
            "shortfall": self.shortfall,
        }

    def observations(self, scope: str, at: float) -> list[Observation]:
        """``accuracy_shortfall`` for subject ``labels`` (nothing without labels)."""
        if not self.labelled:
            return []
        return [
            Observation(scope, "labels", "accuracy_shortfall", self.shortfall, self.labelled, at)
        ]


def _pair(sample: Mapping[str, Any] | Sequence[Any]) -> tuple[Any, Any]:
    if isinstance(sample, Mapping):
        return sample.get("predicted"), sample.get("label")
    predicted, label = sample
    return predicted, label


def on_device_accuracy(
    samples: Iterable[Mapping[str, Any] | Sequence[Any]],
    offline_accuracy: float,
    level: float = 0.95,
) -> AccuracySkew:
    """Accuracy of the labelled ``samples`` with a Wilson interval, against ``offline_accuracy``.

    A sample is a mapping with ``predicted`` and ``label`` (a stored sample row)
    or a ``(predicted, label)`` pair; labels are compared as strings, and samples
    whose label is ``None`` (not labelled yet) are skipped.
    """
    if not 0.0 <= offline_accuracy <= 1.0:
        raise InvalidInput(f"offline accuracy must be between 0 and 1, got {offline_accuracy!r}")
    labelled = correct = 0
    for s in samples:
        predicted, label = _pair(s)
        if label is None:
            continue
        labelled += 1
        correct += str(predicted) == str(label)
    lo, hi = wilson_interval(correct, labelled, level)
    return AccuracySkew(labelled, correct, float(offline_accuracy), lo, hi, level)


@dataclass(frozen=True)
class DeviceSkew:
    """One device against the rest of its group: every distribution, and those flagged."""

    device: str
    samples: int
    tests: tuple[DistributionDrift, ...]
    p_adjusted: tuple[float | None, ...]
    flagged: tuple[str, ...]

    @property
    def outlier(self) -> bool:
        return bool(self.flagged)

    @property
    def min_p_adjusted(self) -> float:
        return min((p for p in self.p_adjusted if p is not None), default=1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "samples": self.samples,
            "outlier": self.outlier,
            "flagged": list(self.flagged),
            "tests": [
                {**t.to_dict(), "p_adjusted": p}
                for t, p in zip(self.tests, self.p_adjusted, strict=True)
            ],
        }

    def observations(self, at: float) -> list[Observation]:
        """``group_p_adjusted`` per distribution, in scope ``device:<id>``."""
        return [
            Observation(
                f"device:{self.device}",
                {"classes": "class", "confidence": "confidence"}.get(t.kind, t.name),
                "group_p_adjusted",
                p,
                t.samples,
                at,
            )
            for t, p in zip(self.tests, self.p_adjusted, strict=True)
            if p is not None
        ]


def _as_window(value: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    return merge_windows(list(value))


def _distributions(
    baseline: Mapping[str, Any], ref: Mapping[str, Any], win: Mapping[str, Any]
) -> list[DistributionDrift]:
    names = [str(f["name"]) for f in baseline.get("features", [])]
    if len(names) != len(win["features"]):
        raise InvalidInput(
            f"windows have {len(win['features'])} features and the baseline {len(names)}; "
            "group windows of one model variant"
        )
    out = [
        compare_counts(name, "feature", r, w)
        for name, r, w in zip(names, ref["features"], win["features"], strict=True)
    ]
    out.append(
        compare_counts(
            "classes", "classes", ref["class_counts"], win["class_counts"], ordered=False
        )
    )
    out.append(
        compare_counts(
            "confidence", "confidence", ref["confidence_counts"], win["confidence_counts"]
        )
    )
    return out


def group_outliers(
    windows_by_device: Mapping[str, Mapping[str, Any] | Sequence[Mapping[str, Any]]],
    baseline: Mapping[str, Any],
    alpha: float = DEFAULT_ALPHA,
    min_samples: int = 200,
    min_psi: float = 0.0,
) -> list[DeviceSkew]:
    """Devices of one group whose distributions differ from the merged rest of the group.

    ``windows_by_device`` maps each device to its window (or a list of windows,
    merged here) of one model variant. Every device with ``min_samples``
    predictions or more is tested, each feature, its classes and confidence
    against the same of all other devices merged. The family is every test
    on every tested device, so a distribution is flagged when
    ``p * tests * devices < alpha`` -- with no real differences, the chance that
    any device is flagged is at most ``alpha`` -- and its PSI against the rest
    is at least ``min_psi`` (on a large fleet tiny, harmless differences become
    significant; ``min_psi`` keeps only those big enough to matter).

    A device found unlike the others is then left out of everyone else's rest: when
    any device is flagged, the most significant one keeps its result, and the others
    are tested again against the rest without it, until no further device is flagged.
    Otherwise one very different device would make the others look unlike their rest
    too (in a group of three, it is half of each other device's rest). Devices come back
    most significant first.
    """
    merged = {str(d): _as_window(w) for d, w in windows_by_device.items()}
    tested = [d for d, w in merged.items() if int(w["count"]) >= min_samples]
    if len(merged) < 2 or not tested:
        return []
    family: int | None = None
    out: list[DeviceSkew] = []
    last: dict[str, DeviceSkew] = {}
    excluded: set[str] = set()
    remaining = list(tested)
    while remaining:
        rests = {
            d: [w for e, w in merged.items() if e != d and e not in excluded] for d in remaining
        }
        results = [
            (
                d,
                int(merged[d]["count"]),
                _distributions(baseline, merge_windows(rests[d]), merged[d]),
            )
            for d in remaining
            if rests[d]
        ]
        if family is None:  # the first round's tests: every tested device
            family = sum(
                1
                for _, _, dists in results
                for t in dists
                if t.chi2 is not None and t.chi2.dof >= 1
            )
        judged = {d: _judge(d, n, dists, family, alpha, min_psi) for d, n, dists in results}
        # a device with nobody left to compare with keeps its result of the round before
        judged.update({d: last[d] for d in remaining if d not in judged})
        flagged = sorted(
            (s for d, s in judged.items() if s.outlier and d in {r[0] for r in results}),
            key=lambda s: (s.min_p_adjusted, s.device),
        )
        if not flagged or len(remaining) == 1:
            out.extend(judged.values())
            break
        worst = flagged[0]
        out.append(worst)
        excluded.add(worst.device)
        remaining.remove(worst.device)
        last = judged
    out.sort(key=lambda s: (s.min_p_adjusted, s.device))
    return out


def _judge(
    device: str,
    count: int,
    dists: list[DistributionDrift],
    family: int,
    alpha: float,
    min_psi: float,
) -> DeviceSkew:
    p_adj: list[float | None] = []
    flagged = []
    for t in dists:
        if t.chi2 is None or t.chi2.dof < 1:
            p_adj.append(None)
            continue
        p = min(1.0, t.chi2.p_value * family)
        p_adj.append(p)
        if p < alpha and (t.psi or 0.0) >= min_psi:
            flagged.append(t.name)
    return DeviceSkew(device, count, tuple(dists), tuple(p_adj), tuple(flagged))
