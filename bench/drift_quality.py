"""Drift detection quality: detection delay of a 0.5-sigma mean shift and the false-alarm rate.

Usage::

    python bench/drift_quality.py [--quick] [--window N] [--json OUT] [--check]

Everything is the project's own path. Training rows are the demo's data,
``edgeops.datasets.sensor_windows(n_per_class=250, seed=0)`` split like the
demo pipeline (25 % held out, stratified, seed 42); the demo's feature spec
(``edgeops.demo.DEMO_FEATURES``: 7 window statistics and 4 FFT bands per axis,
standardized; 33 features) is fitted on them with ``edgeops_protocol.features.fit``;
the model is a scikit-learn ``LogisticRegression`` trained on those features
(its class probabilities are the outputs; it stands in for the demo's Keras
model so the benchmark needs no TensorFlow); the baseline is
``edgeops_protocol.baseline.baseline_profile`` of the training rows and the
model's outputs on them. Live traffic is further seeded ``sensor_windows``
tables, transformed by the same fitted features, scored by the same model and
counted row by row into ``edgeops_protocol.stats.WindowStats``, one window at a
time, exactly as the agent counts predictions. Drift is
``drift={"mean_shift": {"ax": 0.5}}``: half a standard deviation of the raw
``ax`` channel added to every ``ax`` sample.

The rule under test is :func:`edgeops.monitoring.drift.detect`: after each
window, every feature, the classes and the confidence histogram of the last
window, and of the last two windows merged, tested against the baseline with a
two-sample chi-square test; flagged when ``p * tests < alpha / 2`` in either
(Bonferroni over the 35 tests and the 2 reports; ``alpha`` 0.005). Reported:

* detection: trials of two clean windows followed by drifted ones (the change
  starts at a window boundary); the delay is the number of drifted windows seen
  when the rule first flags (1: after the first drifted window, 2: the second);
* false alarms: a stream of stationary windows per baseline; the rate is the
  share of evaluations (one per window) that flag any feature, and that flag
  anything, with a 95 % Clopper-Pearson interval (evaluations share a window
  with their neighbour, so the interval is a little optimistic);
* the same windows under other rules, to show why the rule is what it is;
* the issue's words taken literally: a 0.5 sd shift of ONE model input (added
  to the transformed feature, so the model sees it too), for each of the 33.

Window sizes 100, 250 and 500 are compared on the demo's baseline (training
seed 0); the default size is then run on four more baselines (training seeds
1-4), since the false-alarm rate given one baseline depends on that baseline's
own sampling noise.

Targets (from the issue): delay <= 2 windows (PASS when at least 99 % of trials
manage it, on every baseline, and for the one-input shift on every input) and
a false-alarm rate under 1 % on 1,000 stationary windows (PASS when it is, on
every baseline, and when the upper end of the 95 % interval over all baselines'
windows is under 1 %). Every seed is fixed. The exit status is 0 whatever
the numbers; with ``--check`` it is 1 if a target is missed. Results are in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgeops.datasets import sensor_windows
from edgeops.demo import DEMO_FEATURES
from edgeops.monitoring.alerts import DEFAULT_RULES, Observation, OpenAlert, evaluate
from edgeops.monitoring.drift import (
    DEFAULT_ALPHA,
    MIN_EXPECTED,
    Detection,
    DriftReport,
    detect,
)
from edgeops.monitoring.metrics import chi_square, coarsen_bins, regroup
from edgeops_protocol.baseline import baseline_profile
from edgeops_protocol.features import FittedFeatures, fit
from edgeops_protocol.stats import WindowStats, merge_windows

TRAIN_PER_CLASS = 250  # the demo's data: sensor_windows(n_per_class=250, seed)
TEST_SIZE, SPLIT_SEED = 0.25, 42  # the demo pipeline's split
DRIFT = {"mean_shift": {"ax": 0.5}}
WINDOW = 250  # predictions per window: the agent's default (docs/monitoring.md)
WINDOW_SIZES = (100, 250, 500)
STATIONARY = 1000  # stationary windows per baseline
TRIALS = 200  # detection trials per setting
SINGLE_TRIALS = 30  # detection trials per model input for the one-feature shift
SINGLE_TRIALS_OTHER = 10  # ... at the window sizes compared with the default
MAX_DELAY = 4  # drifted windows generated per trial
CHUNK = 20  # windows per generated table in a stationary stream
BASELINE_SEEDS = (0, 1, 2, 3, 4)  # training seeds; 0 is the demo's
TARGET_DELAY, TARGET_DETECTED, TARGET_FALSE_ALARMS = 2, 0.99, 0.01


@dataclass
class Setup:
    """A trained model variant: fitted features, the model, its baseline profile."""

    seed: int
    features: FittedFeatures
    model: Any
    baseline: dict[str, Any]
    accuracy: float
    feature_sd: np.ndarray  # of each model input on the training rows


def train(seed: int) -> Setup:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    df = sensor_windows(n_per_class=TRAIN_PER_CLASS, seed=seed)
    tr, te = train_test_split(
        df, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=df["label"]
    )
    fitted = fit(DEMO_FEATURES, tr)
    X = fitted.transform(tr)
    model = LogisticRegression(max_iter=2000).fit(X, tr["label"].to_numpy())
    labels = [str(c) for c in model.classes_]
    base = baseline_profile(X, model.predict_proba(X), fitted.feature_names, labels)
    acc = float(model.score(fitted.transform(te), te["label"].to_numpy()))
    return Setup(seed, fitted, model, base, acc, X.std(axis=0))


def windows_from(
    setup: Setup,
    seed: int,
    n_windows: int,
    size: int,
    drift: Any = None,
    feature_shift: tuple[int, float] | None = None,
) -> list:
    """``n_windows`` consecutive windows of ``size`` predictions from one seeded table.

    ``drift`` goes to ``sensor_windows``; ``feature_shift=(j, k)`` instead adds ``k``
    training standard deviations to model input ``j`` (the model sees it too).
    """
    rows = n_windows * size
    if rows % 4:
        raise ValueError("windows x size must be a multiple of 4 (four balanced classes)")
    df = sensor_windows(n_per_class=rows // 4, seed=seed, drift=drift)
    X = setup.features.transform(df)
    if feature_shift is not None:
        j, k = feature_shift
        X[:, j] += np.float32(k * setup.feature_sd[j])
    P = setup.model.predict_proba(X)
    latency = np.random.default_rng(seed).lognormal(np.log(0.8), 0.3, rows)  # ms, made up
    stats = WindowStats(setup.baseline)
    out = []
    for w in range(n_windows):
        for i in range(w * size, (w + 1) * size):
            stats.update(X[i], P[i], float(latency[i]))
        out.append(stats.window())
        stats.reset()
    return out


# --- rules: what each flags on one evaluation ----------------------------------------------


class Evaluation:
    """What the rules read after a window, each part computed when first asked for."""

    def __init__(self, base: Mapping[str, Any], wins: Sequence[Mapping[str, Any]]) -> None:
        self.base, self.wins = base, wins

    @cached_property
    def det(self) -> Detection:
        """The shipped rule: detect() after the last window."""
        return detect(self.base, self.wins)

    @property
    def one(self) -> DriftReport:
        """The last window alone (the rule's ``latest`` report)."""
        return self.det.latest

    @property
    def two(self) -> DriftReport:
        """The last two windows merged (the rule's ``recent`` report)."""
        return self.det.recent

    @cached_property
    def merged(self) -> dict[str, Any]:
        """The last two windows merged, as counts."""
        return merge_windows(list(self.wins[-2:]))


evaluation = Evaluation


Rule = Callable[[Mapping[str, Any], Evaluation], list[str]]


def shipped(base: Mapping[str, Any], ev: Evaluation) -> list[str]:
    return [d.name for d in ev.det.flagged()]


def two_windows(base: Mapping[str, Any], ev: Evaluation) -> list[str]:
    return [d.name for d in ev.two.flagged(DEFAULT_ALPHA)]


def one_window(base: Mapping[str, Any], ev: Evaluation) -> list[str]:
    return [d.name for d in ev.one.flagged(DEFAULT_ALPHA)]


def unadjusted(base: Mapping[str, Any], ev: Evaluation) -> list[str]:
    return [d.name for d in ev.two.distributions() if d.chi2 and d.chi2.p_value < DEFAULT_ALPHA]


def baseline_exact(base: Mapping[str, Any], ev: Evaluation) -> list[str]:
    """Goodness of fit to the baseline's shares, as if the baseline were exact (features)."""
    tests = []
    for f, counts in zip(base["features"], ev.merged["features"], strict=True):
        groups = coarsen_bins(f["counts"], MIN_EXPECTED / min(sum(counts), sum(f["counts"])))
        test = chi_square(regroup(f["counts"], groups), regroup(counts, groups))
        tests.append((f["name"], test))
    return [name for name, t in tests if t.p_value * len(tests) < DEFAULT_ALPHA]


def psi_above(limit: float) -> Rule:
    def run(base: Mapping[str, Any], ev: Evaluation) -> list[str]:
        return [d.name for d in ev.two.features if d.psi is not None and d.psi > limit]

    return run


SHIPPED = "shipped: 1 window or 2 merged, alpha/2 each"
TWO = "2 windows merged, alpha"
ONE = "1 window, alpha"
RULES: dict[str, Rule] = {
    SHIPPED: shipped,
    TWO: two_windows,
    ONE: one_window,
    "2 windows, no multiple-test correction": unadjusted,
    "2 windows, baseline taken as exact": baseline_exact,
    "2 windows, PSI > 0.1 on any feature": psi_above(0.1),
    "2 windows, PSI > 0.2 on any feature": psi_above(0.2),
}
SINGLE_RULES = {name: RULES[name] for name in (SHIPPED, TWO, ONE)}


# --- measurements ---------------------------------------------------------------------------


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(level, method="exact")
    return float(ci.low), float(ci.high)


def shift_sizes(setup: Setup, seed: int = 99) -> dict[str, float]:
    """Mean shift of each feature under DRIFT, in that feature's standard deviations."""
    plain = setup.features.transform(sensor_windows(n_per_class=1000, seed=seed))
    moved = setup.features.transform(sensor_windows(n_per_class=1000, seed=seed, drift=DRIFT))
    d = (moved.mean(axis=0) - plain.mean(axis=0)) / plain.std(axis=0)
    names = setup.features.feature_names
    return {n: round(float(v), 3) for n, v in zip(names, d, strict=True) if abs(v) > 1e-6}


def is_feature(setup: Setup, name: str) -> bool:
    return name in setup.features.feature_names


def detection(
    setup: Setup,
    size: int,
    trials: int,
    rules: Mapping[str, Rule],
    feature_shift: tuple[int, float] | None = None,
    seed0: int = 0,
) -> dict:
    """Per rule: delay counts (1..MAX_DELAY, or 'missed'), clean-pair alarms, what flagged.

    Each trial is two clean windows, then MAX_DELAY drifted ones (DRIFT on the raw
    data, or ``feature_shift`` on one model input). ``on_target`` is the share of
    detections that flagged a feature the change moved.
    """
    if feature_shift is None:
        moved = set(shift_sizes(setup))
    else:
        moved = {setup.features.feature_names[feature_shift[0]]}
    out: dict[str, dict[str, Any]] = {
        name: {"delays": Counter(), "clean_alarms": 0, "flagged": Counter(), "on_target": 0}
        for name in rules
    }
    base = 1000 * setup.seed + seed0
    for t in range(trials):
        clean = windows_from(setup, 2_000_000 + base + t, 2, size)
        drift = DRIFT if feature_shift is None else None
        drifted = windows_from(
            setup, 3_000_000 + base + t, MAX_DELAY, size, drift, feature_shift=feature_shift
        )
        stream = clean + drifted
        evs = [evaluation(setup.baseline, stream[: 2 + k]) for k in range(MAX_DELAY + 1)]
        for name, rule in rules.items():
            res = out[name]
            if any(is_feature(setup, n) for n in rule(setup.baseline, evs[0])):
                res["clean_alarms"] += 1
            delay: int | str = "missed"
            for k in range(1, MAX_DELAY + 1):
                flagged = rule(setup.baseline, evs[k])
                if flagged:
                    delay = k
                    res["flagged"].update(flagged)
                    res["on_target"] += bool(moved & set(flagged))
                    break
            res["delays"][delay] += 1
    for res in out.values():
        within = sum(c for d, c in res["delays"].items() if d != "missed" and d <= TARGET_DELAY)
        res["within_target"] = within / trials
        res["trials"] = trials
        res["delays"] = {str(k): v for k, v in sorted(res["delays"].items(), key=str)}
        res["flagged"] = dict(res["flagged"].most_common(8))
    return out


def single_feature(
    setup: Setup, size: int, trials: int, rules: Mapping[str, Rule], k: float = 0.5
) -> dict[str, Any]:
    """Per rule: detection of a shift of ``k`` training sd in one model input at a time."""
    per: dict[str, dict[str, Any]] = {name: {} for name in rules}
    for j, fname in enumerate(setup.features.feature_names):
        res = detection(setup, size, trials, rules, feature_shift=(j, k), seed0=500 + 10 * j)
        for name in rules:
            per[name][fname] = {
                "within_target": res[name]["within_target"],
                "delays": res[name]["delays"],
                "on_target": res[name]["on_target"],
            }
    out = {}
    for name, feats in per.items():
        worst = min(feats, key=lambda n: feats[n]["within_target"])
        delays: Counter[str] = Counter()
        for v in feats.values():
            delays.update(v["delays"])
        out[name] = {
            "shift_sd": k,
            "trials_per_feature": trials,
            "within_target": sum(v["within_target"] for v in feats.values()) / len(feats),
            "delays": dict(sorted(delays.items())),
            "worst": {"feature": worst, **feats[worst]},
            "per_feature": feats,
        }
    return out


def stationary_stream(setup: Setup, size: int, n: int) -> list[dict[str, Any]]:
    """``n + 1`` windows with no drift (``n`` evaluations), from tables of CHUNK windows."""
    wins: list[dict[str, Any]] = []
    c = 0
    while len(wins) < n + 1:
        wins += windows_from(setup, 1_000_000 + 10_000 * setup.seed + c, CHUNK, size)
        c += 1
    return wins[: n + 1]


def false_alarms(
    setup: Setup, size: int, n: int, rules: Mapping[str, Rule], alerts: bool = False
) -> dict:
    """Per rule: evaluations (one per window) flagging a feature / anything, over ``n`` windows."""
    wins = stationary_stream(setup, size, n)
    counts: dict[str, dict[str, Any]] = {
        name: {"feature": 0, "any": 0, "names": Counter()} for name in rules
    }
    alert_state = AlertLoop() if alerts else None
    for i in range(1, n + 1):
        ev = evaluation(setup.baseline, wins[: i + 1])
        for name, rule in rules.items():
            flagged = rule(setup.baseline, ev)
            c = counts[name]
            if flagged:
                c["any"] += 1
                c["names"].update(flagged)
            if any(is_feature(setup, f) for f in flagged):
                c["feature"] += 1
        if alert_state is not None:
            alert_state.step(ev.det, float(i))
    out: dict[str, Any] = {}
    for name, c in counts.items():
        lo, hi = clopper_pearson(c["feature"], n)
        out[name] = {
            "evaluations": n,
            "feature_alarms": c["feature"],
            "rate": c["feature"] / n,
            "ci95": [lo, hi],
            "any_alarms": c["any"],
            "flagged": dict(c["names"].most_common(5)),
        }
    if alert_state is not None:
        out["_alerts"] = alert_state.summary()
    return out


class AlertLoop:
    """The alert engine with DEFAULT_RULES, fed each evaluation's report (scope 'fleet')."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str, str], OpenAlert] = {}
        self.history: list[list[Observation]] = []
        self.opened: Counter[str] = Counter()

    def step(self, det: Detection, at: float) -> None:
        self.history = [*self.history[-2:], det.observations("fleet", at)]
        obs = [o for h in self.history for o in h]
        to_open, to_close = evaluate(DEFAULT_RULES, obs, list(self.open.values()))
        for ch in to_close:
            self.open.pop((ch.scope, ch.subject, ch.metric), None)
        for ch in to_open:
            self.open[(ch.scope, ch.subject, ch.metric)] = OpenAlert(
                ch.scope, ch.subject, ch.metric, opened_at=ch.at
            )
            self.opened[f"{ch.metric}:{ch.subject}"] += 1

    def summary(self) -> dict[str, Any]:
        return {"opened": dict(self.opened), "still_open": len(self.open)}


# --- report ---------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def run(quick: bool, window: int) -> dict[str, Any]:
    trials, stationary = (40, 200) if quick else (TRIALS, STATIONARY)
    seeds = BASELINE_SEEDS[:2] if quick else BASELINE_SEEDS
    sizes = (window,) if quick else tuple(sorted({*WINDOW_SIZES, window}))
    rules = RULES
    only_shipped = {SHIPPED: RULES[SHIPPED]}
    started = time.perf_counter()
    results: dict[str, Any] = {
        "settings": {
            "window": window,
            "sizes": list(sizes),
            "trials": trials,
            "stationary": stationary,
            "baseline_seeds": list(seeds),
            "alpha": DEFAULT_ALPHA,
            "drift": DRIFT,
            "train_per_class": TRAIN_PER_CLASS,
            "quick": quick,
        }
    }
    setups = {s: train(s) for s in seeds}
    main = setups[seeds[0]]
    results["model"] = {
        "features": len(main.features.feature_names),
        "baseline_rows": main.baseline["rows"],
        "test_accuracy": {str(s): round(u.accuracy, 4) for s, u in setups.items()},
    }
    results["shift_sigma"] = shift_sizes(main)
    print(
        f"{len(main.features.feature_names)} features, baseline of {main.baseline['rows']} rows; "
        f"LogisticRegression test accuracy {main.accuracy:.3f}"
    )
    print("mean shift per feature under", DRIFT, "(in feature sd):", results["shift_sigma"])

    results["by_size"] = {}
    for size in sizes:
        print(f"\n== window of {size} predictions, baseline seed {main.seed} ==")
        det = detection(main, size, trials, rules)
        fa = false_alarms(main, size, stationary, rules, alerts=size == window)
        results["by_size"][str(size)] = {"detection": det, "false_alarms": fa}
        print(
            f"{'rule':48} {'delay<=2':>9} {'delays':26} {'on ax':>6} "
            f"{'false alarms (95% CI)':>31} {'any':>4}"
        )
        for name in rules:
            d, f = det[name], fa[name]
            print(
                f"{name:48} {_pct(d['within_target']):>9} {json.dumps(d['delays']):26} "
                f"{d['on_target']:>6} {f['feature_alarms']:>4}/{f['evaluations']} "
                f"{_pct(f['rate'])} [{_pct(f['ci95'][0])}, {_pct(f['ci95'][1])}] "
                f"{f['any_alarms']:>4}"
            )
        if "_alerts" in fa:
            print("alerts opened by DEFAULT_RULES on the stationary stream:", fa["_alerts"])

    results["by_baseline"] = {}
    total_k = total_n = 0
    print(f"\n== shipped rule, window {window}, one baseline per training seed ==")
    for s, setup in setups.items():
        if s == main.seed:
            res = results["by_size"][str(window)]
            det, fa = res["detection"], res["false_alarms"]
        else:
            det = detection(setup, window, trials // 2, only_shipped)
            fa = false_alarms(setup, window, stationary, only_shipped)
        d, f = det[SHIPPED], fa[SHIPPED]
        results["by_baseline"][str(s)] = {"detection": d, "false_alarms": f}
        total_k += f["feature_alarms"]
        total_n += f["evaluations"]
        print(
            f"seed {s}: delay<=2 in {_pct(d['within_target'])} {json.dumps(d['delays'])}; "
            f"false alarms {f['feature_alarms']}/{f['evaluations']} "
            f"[{_pct(f['ci95'][0])}, {_pct(f['ci95'][1])}], anything {f['any_alarms']}"
        )
    lo, hi = clopper_pearson(total_k, total_n)
    results["pooled_false_alarms"] = {
        "alarms": total_k,
        "evaluations": total_n,
        "rate": total_k / total_n,
        "ci95": [lo, hi],
    }
    print(f"pooled: {total_k}/{total_n} = {_pct(total_k / total_n)} [{_pct(lo)}, {_pct(hi)}]")

    print("\n== shipped rule: 0.5 sd shift in one model input at a time, baseline seed 0 ==")
    results["single_feature_by_size"] = {}
    for size in sizes:
        per_feature = (4 if quick else SINGLE_TRIALS) if size == window else SINGLE_TRIALS_OTHER
        by_rule = single_feature(main, size, per_feature, SINGLE_RULES)
        results["single_feature_by_size"][str(size)] = by_rule
        for name, one in by_rule.items():
            slow = {n: v["delays"] for n, v in one["per_feature"].items() if v["within_target"] < 1}
            print(
                f"window {size}, {name}: delay<=2 in {_pct(one['within_target'])} of "
                f"{one['trials_per_feature'] * len(one['per_feature'])} trials "
                f"{json.dumps(one['delays'])}; worst {one['worst']['feature']} "
                f"{_pct(one['worst']['within_target'])}; not always within 2: {slow or 'none'}"
            )
    single = results["single_feature_by_size"][str(window)][SHIPPED]

    baselines = results["by_baseline"].values()
    worst_det = min(b["detection"]["within_target"] for b in baselines)
    worst_rate = max(b["false_alarms"]["rate"] for b in baselines)
    pooled_high = results["pooled_false_alarms"]["ci95"][1]
    results["targets"] = {
        # share of trials flagged within 2 windows, on the worst baseline
        "detected_within_2": (worst_det, ">=", TARGET_DETECTED),
        # ... for a shift of one model input, on the worst input (baseline seed 0)
        "single_input_within_2": (single["worst"]["within_target"], ">=", TARGET_DETECTED),
        # the words: the false-alarm rate on 1,000 windows, on the worst baseline
        "false_alarm_rate": (worst_rate, "<", TARGET_FALSE_ALARMS),
        # and with 95 % confidence: the upper end of the interval over all 5,000 windows
        "false_alarm_ci_high_pooled": (pooled_high, "<", TARGET_FALSE_ALARMS),
    }
    print()
    for k, (value, op, target) in results["targets"].items():
        ok = value >= target if op == ">=" else value < target
        print(f"target {k}: {value:.4f} {op} {target} -> {'PASS' if ok else 'MISS'}")
    results["targets"] = {
        k: {"value": v, "target": f"{op} {t}", "pass": v >= t if op == ">=" else v < t}
        for k, (v, op, t) in results["targets"].items()
    }
    per_baseline_high = max(b["false_alarms"]["ci95"][1] for b in baselines)
    results["false_alarm_ci_high_worst_baseline"] = per_baseline_high
    print(f"(upper end of the 95 % interval on the worst single baseline: {per_baseline_high:.4f})")
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": metadata.version("scipy"),
        "scikit-learn": metadata.version("scikit-learn"),
        "platform": platform.platform(),
    }
    print(f"\n{results['seconds']} s")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials, windows, baselines")
    parser.add_argument("--window", type=int, default=WINDOW, help="predictions per window")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    results = run(args.quick, args.window)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if args.check and not all(t["pass"] for t in results["targets"].values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
