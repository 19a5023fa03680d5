"""Drift metrics and reports, checked against scipy, direct numpy and their null distributions."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2, chi2_contingency, chisquare, ks_2samp

from edgeops.errors import InvalidInput
from edgeops.monitoring import alerts, drift, metrics, skew
from edgeops.monitoring.drift import (
    DEFAULT_ALPHA,
    detect,
    drift_report,
    histogram_quantile,
    merge_scope,
    select_windows,
)
from edgeops.monitoring.metrics import (
    chi_square,
    chi_square_2sample,
    coarsen_bins,
    js_distance,
    ks_binned,
    psi,
    psi_threshold,
    regroup,
)
from edgeops_protocol.baseline import baseline_profile
from edgeops_protocol.histogram import histogram
from edgeops_protocol.stats import LATENCY_EDGES_MS, WindowStats, merge_windows

counts_lists = st.integers(2, 12).flatmap(
    lambda k: st.tuples(
        st.lists(st.integers(0, 200), min_size=k, max_size=k).filter(lambda c: sum(c) > 0),
        st.lists(st.integers(0, 200), min_size=k, max_size=k).filter(lambda c: sum(c) > 0),
    )
)


@pytest.mark.parametrize("module", [metrics, drift, alerts, skew])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


# --- distances against independent references -------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-1, 8), min_size=1, max_size=60),
    st.lists(st.integers(-1, 8), min_size=1, max_size=60),
)
def test_ks_binned_equals_scipy_when_values_sit_on_bin_representatives(a, b):
    # Edges at half-integers: each integer falls inside its own bin (-1 in the underflow,
    # 8 in the overflow), so both empirical CDFs only step at values that bins separate,
    # and the largest gap of the binned CDFs is exactly scipy's two-sample statistic.
    edges = [x + 0.5 for x in range(-1, 8)]
    ks = ks_binned(histogram(a, edges), histogram(b, edges))
    assert ks == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-5, 5), min_size=1, max_size=60),
    st.lists(st.floats(-5, 5), min_size=1, max_size=60),
    st.lists(st.floats(-4, 4), min_size=2, max_size=8, unique=True),
)
def test_ks_binned_is_the_raw_gap_at_the_edges_so_never_above_scipy(a, b, edges):
    edges = sorted(edges)
    ks = ks_binned(histogram(a, edges), histogram(b, edges))
    assert ks <= ks_2samp(a, b).statistic + 1e-12
    # ... and it is the largest gap of the raw empirical CDFs just below each edge but the
    # last, and at the last one (the last interior bin is closed), and 0 after overflow
    a_, b_ = np.asarray(a), np.asarray(b)
    gaps = [abs(np.mean(a_ < e) - np.mean(b_ < e)) for e in edges[:-1]]
    gaps += [abs(np.mean(a_ <= edges[-1]) - np.mean(b_ <= edges[-1])), 0.0]
    assert ks == pytest.approx(max(gaps), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(counts_lists)
def test_psi_matches_direct_numpy_and_is_symmetric_and_non_negative(pair):
    e, a = (np.asarray(c, dtype=float) for c in pair)
    pe, pa = np.maximum(e / e.sum(), 1e-4), np.maximum(a / a.sum(), 1e-4)
    direct = float(np.sum((pa - pe) * np.log(pa / pe)))
    assert psi(e, a) == pytest.approx(direct, rel=1e-12, abs=1e-15)
    assert psi(e, a) >= 0.0
    assert psi(e, a) == pytest.approx(psi(a, e), rel=1e-12, abs=1e-15)


@settings(max_examples=200, deadline=None)
@given(counts_lists)
def test_js_distance_matches_scipy(pair):
    e, a = pair
    expected = jensenshannon(np.asarray(e, float), np.asarray(a, float), base=2)
    assert js_distance(e, a) == pytest.approx(float(expected), abs=1e-7)
    assert 0.0 <= js_distance(e, a) <= 1.0


def test_distances_of_known_histograms():
    assert psi([50, 50], [50, 50]) == 0.0
    assert psi([50, 50], [25, 75]) == pytest.approx(0.25 * np.log(3))
    assert ks_binned([1, 1, 1, 1], [0, 0, 0, 4]) == pytest.approx(0.75)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)


# --- chi-square tests -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(counts_lists)
def test_chi_square_matches_scipy_chisquare(pair):
    expected, actual = (np.asarray(c, dtype=float) for c in pair)
    result = chi_square(expected, actual)
    keep = (expected > 0) | (actual > 0)
    if np.any((expected == 0) & (actual > 0)):
        assert result.statistic == np.inf and result.p_value == 0.0
        return
    e, a = expected[keep], actual[keep]
    if e.size < 2:
        assert result.dof == 0 and result.p_value == 1.0
        return
    ref = chisquare(a, e / e.sum() * a.sum())
    assert result.dof == e.size - 1
    assert result.statistic == pytest.approx(float(ref.statistic), rel=1e-9, abs=1e-9)
    assert result.p_value == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(counts_lists)
def test_chi_square_2sample_matches_scipy_contingency(pair):
    r, a = (np.asarray(c, dtype=float) for c in pair)
    result = chi_square_2sample(r, a)
    keep = (r + a) > 0
    if keep.sum() < 2:
        assert (result.statistic, result.dof, result.p_value) == (0.0, 0, 1.0)
        return
    stat, p, dof, _ = chi2_contingency(np.vstack([r[keep], a[keep]]), correction=False)
    assert result.dof == dof
    assert result.statistic == pytest.approx(stat, rel=1e-9, abs=1e-9)
    assert result.p_value == pytest.approx(p, rel=1e-9, abs=1e-12)


def test_chi_square_zero_expected_bins():
    # a class the baseline never predicted: impossible under the fixed distribution ...
    gof = chi_square([40, 60, 0], [10, 10, 5])
    assert gof.statistic == np.inf and gof.p_value == 0.0 and gof.dof == 2
    assert gof.to_dict()["statistic"] is None  # JSON has no infinity
    # ... and a finite, large statistic when the baseline is a sample: c * N / n (docstring)
    two = chi_square_2sample([40, 60, 0], [10, 15, 5])
    assert np.isfinite(two.statistic) and two.dof == 2
    # bins empty on both sides are dropped and take no degree of freedom
    assert chi_square_2sample([5, 0, 5], [5, 0, 5]).dof == 1
    assert chi_square([1, 1, 0], [10, 30, 0]).dof == 1


def test_chi_square_p_values_are_calibrated_under_no_drift():
    rng = np.random.default_rng(7)
    p = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05])
    pv = [
        chi_square_2sample(rng.multinomial(750, p), rng.multinomial(500, p)).p_value
        for _ in range(2000)
    ]
    assert 0.035 <= np.mean(np.asarray(pv) < 0.05) <= 0.065
    assert np.mean(np.asarray(pv) < 0.5) == pytest.approx(0.5, abs=0.04)


def test_psi_null_distribution_gives_its_threshold():
    # n*m/(n+m) * PSI is about chi-square(bins - 1): mean bins - 1, upper tail alpha
    rng = np.random.default_rng(3)
    p = np.full(10, 0.1)
    n, m, alpha = 500, 750, 0.05
    values = np.array([psi(rng.multinomial(m, p), rng.multinomial(n, p)) for _ in range(2000)])
    assert np.mean(values) / (1 / n + 1 / m) == pytest.approx(9.0, rel=0.05)
    threshold = psi_threshold(n, m, 10, alpha)
    assert threshold == pytest.approx(chi2.isf(alpha, 9) * (1 / n + 1 / m))
    assert 0.035 <= np.mean(values > threshold) <= 0.07  # PSI's tail is a little heavier
    assert psi_threshold(500, None, 10, 0.01) == pytest.approx(chi2.isf(0.01, 9) / 500)


def test_coarsen_bins_merges_sparse_bins_and_tails():
    assert coarsen_bins([0, 10, 10, 10, 0], 0.3) == [(0, 2), (2, 3), (3, 5)]
    assert coarsen_bins([1, 1, 1, 97], 0.05) == [(0, 4)]
    assert coarsen_bins([1, 1, 1, 97], 0.02) == [(0, 2), (2, 4)]
    assert coarsen_bins([0, 0, 0], 0.1) == [(0, 3)]
    assert coarsen_bins([5, 5], 0.9) == [(0, 2)]
    groups = coarsen_bins([3, 0, 7, 1, 1, 8], 0.2)
    assert [i for a, b in groups for i in range(a, b)] == list(range(6))  # a partition, in order
    assert regroup([3, 0, 7, 1, 1, 8], groups) == [10.0, 10.0]


# --- latency quantiles --------------------------------------------------------------------------


def _latency_counts(values):
    return histogram(values, LATENCY_EDGES_MS)


def test_histogram_quantile_interpolates_linearly_within_a_bin():
    # 100 values spread evenly over [1, 2): quantiles are exact
    values = 1.0 + (np.arange(100) + 0.5) / 100
    c = _latency_counts(values)
    assert histogram_quantile(c, LATENCY_EDGES_MS, 0.5) == pytest.approx(1.5)
    assert histogram_quantile(c, LATENCY_EDGES_MS, 0.95) == pytest.approx(1.95)
    # half at [0.1, 0.2), half at [5, 10): the median is the top of the first bin
    c = _latency_counts([0.15] * 50 + [7.0] * 50)
    assert histogram_quantile(c, LATENCY_EDGES_MS, 0.5) == pytest.approx(0.2)
    assert histogram_quantile(c, LATENCY_EDGES_MS, 0.9) == pytest.approx(5 + 5 * 0.8)
    assert histogram_quantile(c, LATENCY_EDGES_MS, 0.9, max_value=7.0) == pytest.approx(5 + 2 * 0.8)
    assert histogram_quantile(c, LATENCY_EDGES_MS, 0.0) == pytest.approx(0.1)


def test_histogram_quantile_overflow_underflow_and_empty():
    c = _latency_counts([2000.0] * 10)
    assert histogram_quantile(c, LATENCY_EDGES_MS, 0.5) == 1000.0
    assert histogram_quantile(c, LATENCY_EDGES_MS, 0.5, max_value=3000.0) == 2000.0
    assert histogram_quantile(_latency_counts([-1.0]), LATENCY_EDGES_MS, 0.5) == 0.0
    assert histogram_quantile([0] * 16, LATENCY_EDGES_MS, 0.5) is None
    with pytest.raises(ValueError):
        histogram_quantile([0] * 3, LATENCY_EDGES_MS, 0.5)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.01, 900.0), min_size=1, max_size=200), st.floats(0.0, 1.0))
def test_histogram_quantile_stays_in_the_bin_of_the_true_quantile(values, q):
    c = _latency_counts(values)
    est = histogram_quantile(c, LATENCY_EDGES_MS, q, max_value=max(values))
    rank = q * len(values)
    k = max(int(np.ceil(rank)), 1)  # the k-th smallest value holds rank q*n
    true = sorted(values)[k - 1]
    e = np.asarray(LATENCY_EDGES_MS)
    j = int(np.searchsorted(e, true, side="right"))
    assert e[j - 1] - 1e-9 <= est <= min(e[j], max(values)) + 1e-9


# --- reports on windows -----------------------------------------------------------------------


def _setup(seed=0, n=1500, features=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features))
    scores = rng.dirichlet([2, 2, 2], size=n)
    names = [f"f{j}" for j in range(features)]
    return baseline_profile(X, scores, names, ["a", "b", "c"])


def _window(base, X, scores, latency=0.8, errors=0):
    w = WindowStats(base)
    for i, (x, s) in enumerate(zip(X, scores, strict=True)):
        w.update(x, None if i < errors else s, latency_ms=latency, error=i < errors)
    return w.window()


def test_report_on_the_baseline_data_itself_finds_nothing():
    rng = np.random.default_rng(0)
    X, S = rng.normal(size=(1500, 3)), rng.dirichlet([2, 2, 2], size=1500)
    base = baseline_profile(X, S, ["f0", "f1", "f2"], ["a", "b", "c"])
    r = drift_report(base, _window(base, X, S))
    for d in r.distributions():
        assert d.psi == pytest.approx(0.0, abs=1e-12)
        assert d.chi2.statistic == pytest.approx(0.0, abs=1e-9)
    assert r.flagged() == [] and r.tested == 5
    assert r.count == 1500 and r.error_rate == 0.0 and r.non_finite_rate == 0.0


def test_report_flags_a_shifted_feature_and_only_it():
    base = _setup()
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 3))
    X[:, 1] += 0.5
    r = drift_report(base, _window(base, X, rng.dirichlet([2, 2, 2], size=500)))
    assert [d.name for d in r.flagged()] == ["f1"]
    f1 = r.features[1]
    assert f1.psi > f1.psi_critical and r.p_adjusted(f1) < DEFAULT_ALPHA
    assert f1.ks > 0.15 and f1.chi2.p_value < 1e-10
    assert r.p_adjusted(f1) == pytest.approx(min(1.0, f1.chi2.p_value * r.tested))


def test_report_outputs_rates_and_latency():
    base = _setup()
    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 3))
    S = np.tile([0.8, 0.1, 0.1], (400, 1))  # always class a, confident
    S[20] = [np.nan, 0.5, 0.5]
    window = _window(base, X, S, latency=3.0, errors=8)
    r = drift_report(base, window)
    assert r.error_rate == pytest.approx(8 / 400)
    assert r.non_finite_rate == pytest.approx(1 / 400)
    assert r.classes.samples == 400 - 8 - 1
    assert r.classes.ks is None  # classes have no order
    assert r.classes.chi2 == chi_square_2sample(
        base["outputs"]["class_counts"], window["class_counts"]
    )
    assert {d.name for d in r.flagged()} == {"classes", "confidence"}
    # every latency 3.0 ms: the bin [2, 5] capped at the max seen, so [2, 3]
    assert r.latency_p50_ms == pytest.approx(2.5) and r.latency_p95_ms == pytest.approx(2.95)
    assert r.latency_mean_ms == pytest.approx(3.0) and r.latency_max_ms == 3.0
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["outputs"]["classes"]["p_adjusted"] < DEFAULT_ALPHA
    assert d["flagged"] == ["classes", "confidence"] and len(d["features"]) == 3
    assert d["latency_ms"]["p95"] == pytest.approx(2.95)


def test_observations_cover_every_distribution_and_the_totals():
    base = _setup()
    rng = np.random.default_rng(4)
    w = _window(base, rng.normal(size=(300, 3)), rng.dirichlet([2] * 3, 300))
    det = detect(base, [w, w])
    obs = det.observations("tag:lab", 100.0)
    keys = {(o.subject, o.metric) for o in obs}
    assert ("f0", "psi") in keys and ("class", "p_adjusted") in keys
    assert ("class", "ks") not in keys and ("confidence", "ks") in keys
    assert ("predictions", "latency_p95_ms") in keys and ("predictions", "error_rate") in keys
    assert all(o.scope == "tag:lab" and o.at == 100.0 for o in obs)
    assert {o.metric for o in obs} <= {rule.metric for rule in alerts.DEFAULT_RULES} | {
        "js",
        "ks",
        "latency_p95_ms",
    }
    p_f0 = next(o for o in obs if o.subject == "f0" and o.metric == "p_adjusted")
    assert p_f0.value == det.p_rule()[0][1] and p_f0.samples == 600


def test_empty_window_and_mismatched_windows():
    base = _setup()
    empty = WindowStats(base).window()
    r = drift_report(base, empty)
    assert r.count == 0 and r.error_rate is None and r.latency_p50_ms is None
    assert all(d.psi is None and d.chi2 is None for d in r.distributions())
    assert r.flagged() == [] and r.tested == 0
    json.dumps(r.to_dict(), allow_nan=False)
    with pytest.raises(InvalidInput, match="features"):
        drift_report(_setup(features=2), empty)
    with pytest.raises(InvalidInput, match="format"):
        drift_report(base, {**empty, "format": 2})
    bad = {**empty, "features": [[0] * 5, *empty["features"][1:]]}
    with pytest.raises(InvalidInput, match="bins"):
        drift_report(base, bad)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 120), st.integers(1, 120))
def test_drift_of_merged_windows_equals_drift_of_the_concatenated_data(seed, n1, n2):
    base = _setup()
    rng = np.random.default_rng(seed)
    X = rng.normal(0.3, 1.2, size=(n1 + n2, 3))
    X[rng.random(X.shape) < 0.02] = np.nan
    S = rng.dirichlet([1, 2, 3], size=n1 + n2)
    lat = rng.lognormal(0, 1, size=n1 + n2)
    parts = []
    for lo, hi in ((0, n1), (n1, n1 + n2)):
        w = WindowStats(base)
        for i in range(lo, hi):
            w.update(X[i], S[i], float(lat[i]))
        parts.append(w.window())
    whole = WindowStats(base)
    for i in range(n1 + n2):
        whole.update(X[i], S[i], float(lat[i]))
    a = drift_report(base, merge_windows(parts)).to_dict()
    b = drift_report(base, whole.window()).to_dict()
    # counts are integers, so everything is equal; only the latency sum is a float sum
    # added in another order
    assert a["latency_ms"].pop("mean") == pytest.approx(b["latency_ms"].pop("mean"), rel=1e-12)
    assert a == b


# --- the detection rule -----------------------------------------------------------------------


def test_detect_tests_the_last_window_and_the_last_two_merged():
    base = _setup()
    rng = np.random.default_rng(8)  # seed 5 gives a 1-in-3000 window, which flags f1
    clean = [
        _window(base, rng.normal(size=(250, 3)), rng.dirichlet([2] * 3, 250)) for _ in range(3)
    ]
    X = rng.normal(size=(250, 3))
    X[:, 0] += 0.5
    moved = _window(base, X, rng.dirichlet([2] * 3, 250))
    quiet = detect(base, clean)
    assert quiet.flagged() == [] and (quiet.latest.count, quiet.recent.count) == (250, 500)
    assert quiet.latest.alpha == quiet.recent.alpha == DEFAULT_ALPHA / 2
    det = detect(base, [*clean, moved])
    assert [d.name for d in det.flagged()] == ["f0"]
    # the rule p-value: twice the smaller of the two reports' adjusted p-values
    for (d, p), a, b in zip(
        det.p_rule(), det.latest.distributions(), det.recent.distributions(), strict=True
    ):
        assert d is b
        expected = min(1.0, 2 * min(det.latest.p_adjusted(a), det.recent.p_adjusted(b)))
        assert p == pytest.approx(expected)
    d = json.loads(json.dumps(det.to_dict(), allow_nan=False))
    assert d["flagged"] == ["f0"] and d["recent"]["count"] == 500
    assert [x["name"] for x in d["p_rule"]] == ["f0", "f1", "f2", "classes", "confidence"]
    # windows closed by time hold any number of predictions: merge until min_count
    by_count = detect(base, [*clean, moved], min_count=400)
    assert (by_count.latest.count, by_count.recent.count) == (500, 1000)
    by_count = detect(base, [*clean, moved], min_count=250)
    assert (by_count.latest.count, by_count.recent.count) == (250, 500)
    assert detect(base, clean[:1]).recent.count == 250
    with pytest.raises(InvalidInput):
        detect(base, [])


def test_detect_rarely_flags_windows_with_no_drift():
    # 200 evaluations of 30 features at alpha 0.005: about 1 false alarm expected
    rng = np.random.default_rng(11)
    base = _setup(seed=11, n=1000, features=30)
    alarms = 0
    prev = None
    for _ in range(200):
        X = rng.normal(size=(200, 30))
        cur = _window(base, X, rng.dirichlet([2] * 3, 200))
        if prev is not None and detect(base, [prev, cur]).flagged():
            alarms += 1
        prev = cur
    assert alarms <= 4


# --- scopes and time ranges -------------------------------------------------------------------


def _records():
    base = _setup()
    rng = np.random.default_rng(6)
    recs = []
    for i, device in enumerate(["pi-1", "pi-2", "pi-3"] * 4):
        w = _window(base, rng.normal(size=(20 + i, 3)), rng.dirichlet([2] * 3, 20 + i))
        recs.append({"device": device, "start": 10.0 * i, "end": 10.0 * i + 10, "stats": w})
    return recs


def test_merge_scope_by_device_group_and_time_range():
    recs = _records()
    assert merge_scope(recs)["count"] == sum(r["stats"]["count"] for r in recs)
    one = merge_scope(recs, devices=["pi-2"])
    assert one["count"] == sum(r["stats"]["count"] for r in recs if r["device"] == "pi-2")
    group = merge_scope(recs, devices=["pi-1", "pi-3"], since=30.0, until=90.0)
    chosen = [r for r in recs if r["device"] != "pi-2" and 30.0 <= r["end"] < 90.0]
    assert group == merge_windows([r["stats"] for r in chosen])
    assert merge_scope(recs, devices=["nobody"]) is None
    # adjacent ranges split the stream: each window is counted once, by its end
    a, b = merge_scope(recs, until=55.0), merge_scope(recs, since=55.0)
    assert a["count"] + b["count"] == merge_scope(recs)["count"]
    assert len(select_windows(recs, since=20.0, until=20.0)) == 0


def test_merge_scope_refuses_windows_of_different_variants():
    recs = _records()
    other = _window(_setup(features=2), np.zeros((3, 2)), np.full((3, 3), 1 / 3))
    recs.append({"device": "pi-9", "start": 0.0, "end": 1.0, "stats": other})
    with pytest.raises(InvalidInput, match="variant"):
        merge_scope(recs)
