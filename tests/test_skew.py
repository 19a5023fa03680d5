"""Production skew: device/server agreement, on-device accuracy, devices unlike their group."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from edgeops.errors import InvalidInput
from edgeops.monitoring.drift import DEFAULT_ALPHA
from edgeops.monitoring.metrics import chi_square_2sample
from edgeops.monitoring.skew import (
    agreement,
    group_outliers,
    on_device_accuracy,
    wilson_interval,
)
from edgeops_protocol.baseline import baseline_profile
from edgeops_protocol.stats import WindowStats, merge_windows

# --- the binomial interval --------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
    st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)
def test_wilson_interval_matches_scipy(kn, level):
    k, n = kn
    ci = binomtest(k, n).proportion_ci(level, method="wilson")
    lo, hi = wilson_interval(k, n, level)
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    with pytest.raises(ValueError):
        wilson_interval(1, 4, level=1.0)


# --- (a) agreement ----------------------------------------------------------------------------


def test_agreement_of_labels_and_scores():
    device = [[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]]
    server = [[0.8, 0.2, 0.0], [0.2, 0.3, 0.5], [0.0, 0.1, 0.9], [0.6, 0.3, 0.1]]
    a = agreement(device, server)
    assert (a.n, a.agreeing, a.non_finite) == (4, 3, 0)
    assert a.rate == 0.75
    diffs = np.abs(np.asarray(device) - np.asarray(server))
    assert a.mean_abs_diff == pytest.approx(diffs.mean())
    assert a.max_abs_diff == pytest.approx(0.2)
    assert (a.ci_low, a.ci_high) == pytest.approx(wilson_interval(3, 4))
    (obs,) = a.observations("device:pi-1", 5.0)
    assert (obs.metric, obs.subject, obs.value, obs.samples) == ("agreement", "outputs", 0.75, 4)
    json.dumps(a.to_dict(), allow_nan=False)


def test_agreement_with_one_sigmoid_column_and_non_finite_rows():
    a = agreement([0.7, 0.4, np.nan, 0.51], [0.6, 0.6, 0.2, 0.49])
    # labels 1/0/?/1 against 1/1/0/0: one agrees; the NaN row counts as a disagreement
    assert (a.n, a.agreeing, a.non_finite) == (4, 1, 1)
    assert a.mean_abs_diff == pytest.approx((0.1 + 0.2 + 0.02) / 3)
    assert agreement([[np.nan]], [[0.5]]).mean_abs_diff is None
    empty = agreement(np.zeros((0, 3)), np.zeros((0, 3)))
    assert empty.rate is None and empty.observations("fleet", 0.0) == []


def test_agreement_refuses_outputs_of_different_shapes():
    with pytest.raises(InvalidInput, match="shape"):
        agreement([[0.1, 0.9]], [[0.1, 0.8, 0.1]])
    with pytest.raises(InvalidInput):
        agreement([[0.1, 0.9], [0.5]], [[0.1, 0.9], [0.5, 0.5]])


# --- (b) on-device accuracy -------------------------------------------------------------------


def test_on_device_accuracy_flags_an_offline_accuracy_outside_the_interval():
    samples = (
        [{"predicted": "walk", "label": "walk"}] * 160
        + [{"predicted": "walk", "label": "run"}] * 40
        + [{"predicted": "run", "label": None}] * 50  # not labelled yet: skipped
    )
    r = on_device_accuracy(samples, offline_accuracy=0.93)
    assert (r.labelled, r.correct, r.accuracy) == (200, 160, 0.8)
    assert (r.ci_low, r.ci_high) == pytest.approx(wilson_interval(160, 200))
    assert r.outside and r.direction == "worse"
    assert r.shortfall == pytest.approx(0.93 - r.ci_high) and r.shortfall > 0
    (obs,) = r.observations("tag:lab", 1.0)
    assert (obs.metric, obs.value, obs.samples) == ("accuracy_shortfall", r.shortfall, 200)
    inside = on_device_accuracy(samples, offline_accuracy=0.82)
    assert not inside.outside and inside.direction is None and inside.shortfall < 0
    better = on_device_accuracy(samples, offline_accuracy=0.6)
    assert better.direction == "better"
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["direction"] == "worse" and d["labelled"] == 200


def test_on_device_accuracy_with_pairs_labels_as_strings_and_no_labels():
    r = on_device_accuracy([(3, "3"), ("4", 4), (1, 2)], 0.5, level=0.9)
    assert (r.labelled, r.correct, r.level) == (3, 2, 0.9)
    none = on_device_accuracy([("a", None)], 0.9)
    assert none.labelled == 0 and none.accuracy is None and not none.outside
    assert none.observations("fleet", 0.0) == []
    with pytest.raises(InvalidInput):
        on_device_accuracy([], 1.5)


# --- (c) devices unlike their group -----------------------------------------------------------


def _baseline():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 4))
    return baseline_profile(
        X, rng.dirichlet([2, 2], size=2000), [f"f{j}" for j in range(4)], ["a", "b"]
    )


def _device_window(base, seed, n=400, shift=0.0, column=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    X[:, column] += shift
    S = rng.dirichlet([2, 2], size=n)
    w = WindowStats(base)
    for x, s in zip(X, S, strict=True):
        w.update(x, s, latency_ms=1.0)
    return w.window()


def test_group_outliers_finds_the_one_device_unlike_the_rest():
    base = _baseline()
    windows = {f"pi-{i}": _device_window(base, i) for i in range(6)}
    windows["pi-odd"] = _device_window(base, 99, shift=0.6)
    result = group_outliers(windows, base)
    assert [s.device for s in result if s.outlier] == ["pi-odd"]
    odd = result[0]
    assert odd.device == "pi-odd" and odd.flagged == ("f2",) and odd.samples == 400
    # the test is the device against the merge of all the others, Bonferroni over the family
    rest = merge_windows([w for d, w in windows.items() if d != "pi-odd"])
    raw = chi_square_2sample(rest["features"][2], windows["pi-odd"]["features"][2])
    family = 7 * 6  # 7 devices x (4 features + classes + confidence)
    assert odd.tests[2].chi2.statistic == pytest.approx(raw.statistic, rel=0.2)  # bins merged
    assert odd.p_adjusted[2] == pytest.approx(min(1.0, odd.tests[2].chi2.p_value * family))
    obs = odd.observations(3.0)
    assert {o.scope for o in obs} == {"device:pi-odd"}
    assert {o.subject for o in obs} == {"f0", "f1", "f2", "f3", "class", "confidence"}
    assert all(o.metric == "group_p_adjusted" for o in obs)
    json.dumps([s.to_dict() for s in result], allow_nan=False)


def test_group_outliers_quiet_group_min_samples_and_min_psi():
    base = _baseline()
    quiet = {f"pi-{i}": _device_window(base, 10 + i) for i in range(8)}
    assert not any(s.outlier for s in group_outliers(quiet, base))
    # a small device is part of everyone's rest but is not tested itself
    quiet["pi-small"] = _device_window(base, 50, n=40, shift=3.0)
    result = group_outliers(quiet, base)
    assert "pi-small" not in {s.device for s in result} and len(result) == 8
    # a real but small difference: significant, yet under a PSI floor
    windows = {f"pi-{i}": _device_window(base, 20 + i, n=3000) for i in range(3)}
    windows["pi-odd"] = _device_window(base, 98, n=3000, shift=0.25)
    flagged = group_outliers(windows, base)[0]
    assert flagged.device == "pi-odd" and flagged.outlier
    psi_f2 = flagged.tests[2].psi
    assert not group_outliers(windows, base, min_psi=psi_f2 + 0.01)[0].outlier


def test_group_outliers_merges_lists_of_windows_and_needs_a_group():
    base = _baseline()
    a = [_device_window(base, 1, n=200), _device_window(base, 2, n=200)]
    b = _device_window(base, 3)
    result = group_outliers({"a": a, "b": b}, base)
    assert {s.device: s.samples for s in result} == {"a": 400, "b": 400}
    assert group_outliers({"a": b}, base) == []
    assert group_outliers({}, base) == []
    with pytest.raises(InvalidInput, match="features"):
        group_outliers({"a": b, "b": b}, {"features": []})


def test_group_outliers_false_alarm_rate_is_controlled():
    # 30 quiet groups of 5 devices: the chance of any flag per group is at most alpha
    base = _baseline()
    flagged_groups = 0
    for g in range(30):
        windows = {f"d{i}": _device_window(base, 1000 + 10 * g + i, n=300) for i in range(5)}
        flagged_groups += any(s.outlier for s in group_outliers(windows, base))
    assert flagged_groups <= 1
    assert DEFAULT_ALPHA == 0.005
