"""Alert rules: thresholds, minimum sample counts, hysteresis, and the reasons given."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeops.monitoring.alerts import (
    DEFAULT_RULES,
    AlertRule,
    Observation,
    OpenAlert,
    evaluate,
)

PSI = AlertRule("psi", threshold=0.2, min_samples=100, hysteresis=0.25, clear_after=2)


def run(rule, values, samples=500, scope="fleet", subject="ax_mean"):
    """Feed ``values`` one evaluation at a time, keeping the open alert like a store would.

    Returns the state after each step (True: open) and the changes made.
    """
    history: list[Observation] = []
    open_alert: OpenAlert | None = None
    states, changes = [], []
    for t, v in enumerate(values):
        n = samples[t] if isinstance(samples, list) else samples
        history.append(Observation(scope, subject, rule.metric, v, n, float(t)))
        to_open, to_close = evaluate([rule], history, [open_alert] if open_alert else [])
        for ch in to_open:
            open_alert = OpenAlert(ch.scope, ch.subject, ch.metric, opened_at=ch.at, id=t)
            changes.append((t, ch))
        for ch in to_close:
            assert ch.alert_id == open_alert.id
            open_alert = None
            changes.append((t, ch))
        states.append(open_alert is not None)
    return states, changes


def test_hysteresis_sequence():
    #        0     1     2     3     4     5     6     7     8
    values = [0.1, 0.3, 0.19, 0.14, 0.21, 0.1, 0.16, 0.1, 0.12]
    states, changes = run(PSI, values)
    # opens on 0.3; 0.19 is in the band (stays open); 0.14 is one clear value, then 0.21
    # breaches again (no new alert, the count restarts); 0.1, then 0.16 is in the band
    # (restarts again); 0.1 and 0.12 clear twice in a row: closed at step 8
    assert states == [False, True, True, True, True, True, True, True, False]
    assert [(t, ch.action) for t, ch in changes] == [(1, "open"), (8, "close")]
    opened, closed = changes[0][1], changes[1][1]
    assert opened.value == 0.3 and opened.threshold == 0.2 and opened.samples == 500
    assert opened.reason == "psi of ax_mean in fleet is 0.3, above 0.2 (500 samples)"
    assert closed.reason == (
        "psi of ax_mean in fleet below 0.15 (0.2 less 25% hysteresis) "
        "in the last 2 evaluations: 0.1, 0.12"
    )
    assert closed.details["values"] == [0.1, 0.12]
    assert closed.details["rule"]["clear"] == pytest.approx(0.15)


def test_a_value_at_the_threshold_does_not_breach_and_one_at_the_clear_level_does_not_clear():
    rule = AlertRule("psi", 0.5, hysteresis=0.5, clear_after=2)  # clear level exactly 0.25
    states, _ = run(rule, [0.5, 0.5000001, 0.25, 0.25, 0.249, 0.249])
    assert states == [False, True, True, True, True, False]


def test_too_few_samples_neither_open_nor_count_towards_closing():
    values = [0.5, 0.5, 0.1, 0.9, 0.1]
    samples = [50, 200, 200, 10, 200]
    states, changes = run(PSI, values, samples)
    # 0.5 on 50 samples is not evaluated; on 200 it opens; 0.9 on 10 samples does not
    # interrupt the clear run, so 0.1, (skipped), 0.1 closes
    assert states == [False, True, True, True, False]
    assert [t for t, _ in changes] == [1, 4]
    assert changes[0][1].samples == 200


def test_below_rules_with_an_explicit_clear_level():
    rule = AlertRule("p_adjusted", 0.005, "below", min_samples=200, clear=0.05, clear_after=2)
    states, changes = run(rule, [0.3, 0.001, 0.02, 0.2, 0.04, 0.5, 0.9])
    assert states == [False, True, True, True, True, True, False]
    assert changes[0][1].reason == (
        "p_adjusted of ax_mean in fleet is 0.001, below 0.005 (500 samples)"
    )
    assert "above 0.05 (threshold 0.005) in the last 2 evaluations: 0.5, 0.9" in (
        changes[1][1].reason
    )
    below = AlertRule("agreement", 0.97, "below", hysteresis=0.01)
    assert below.clear_level == pytest.approx(0.9797)


def test_open_after_needs_consecutive_breaches():
    rule = AlertRule("psi", 0.2, open_after=3, clear_after=1)
    states, changes = run(rule, [0.3, 0.3, 0.1, 0.3, 0.3, 0.3, 0.05])
    assert states == [False, False, False, False, False, True, False]
    assert "in the last 3 evaluations" in changes[0][1].reason
    assert changes[0][1].details["values"] == [0.3, 0.3, 0.3]


def test_only_observations_after_the_alert_opened_count_towards_closing():
    obs = [Observation("fleet", "x", "psi", v, 500, t) for t, v in enumerate([0.0, 0.0, 0.3])]
    opened_at_2 = OpenAlert("fleet", "x", "psi", opened_at=2.0)
    assert evaluate([PSI], obs, [opened_at_2]) == ([], [])
    # without opened_at every evaluated observation counts
    assert evaluate([PSI], obs[:2], [OpenAlert("fleet", "x", "psi")])[1][0].action == "close"


def test_keys_are_independent_and_open_alerts_may_be_store_rows():
    obs = [
        Observation("device:pi-1", "ax_mean", "psi", 0.4, 500, 1.0),
        Observation("device:pi-2", "ax_mean", "psi", 0.4, 500, 1.0),
        Observation("fleet", "ax_mean", "psi", 0.01, 5000, 0.0),
        Observation("fleet", "ax_mean", "psi", 0.02, 5000, 1.0),
        Observation("fleet", "ax_mean", "js", 0.9, 5000, 1.0),  # no rule: ignored
    ]
    row = {"id": 7, "scope": "fleet", "subject": "ax_mean", "metric": "psi", "opened_at": None}
    to_open, to_close = evaluate([PSI], obs, [row])
    assert [(c.scope, c.action) for c in to_open] == [
        ("device:pi-1", "open"),
        ("device:pi-2", "open"),
    ]
    assert [(c.scope, c.alert_id) for c in to_close] == [("fleet", 7)]
    # an open alert whose metric has no rule, or no observations, is left alone
    orphan = OpenAlert("fleet", "ax_mean", "ks", opened_at=0.0)
    assert evaluate([PSI], obs, [orphan])[1] == []
    assert evaluate([PSI], [], [row]) == ([], [])


def test_non_finite_values_are_not_evaluated():
    states, _ = run(PSI, [math.nan, math.inf, 0.1, 0.3, math.nan, 0.1, math.nan, 0.1])
    assert states == [False, False, False, True, True, True, True, False]


def test_changes_are_plain_values_in_a_stable_order():
    obs = [Observation(s, "f", "psi", 0.5, 500, 0.0) for s in ("tag:b", "fleet", "tag:a")]
    to_open, _ = evaluate([PSI], obs, [])
    assert [c.scope for c in to_open] == ["fleet", "tag:a", "tag:b"]
    d = to_open[0].to_dict()
    assert d["action"] == "open" and d["metric"] == "psi" and d["subject"] == "f"
    assert d["value"] == 0.5 and d["threshold"] == 0.2 and d["samples"] == 500


def test_rule_validation():
    with pytest.raises(ValueError, match="direction"):
        AlertRule("psi", 0.2, "sideways")
    with pytest.raises(ValueError, match="hysteresis"):
        AlertRule("psi", 0.2, hysteresis=1.5)
    with pytest.raises(ValueError, match="good side"):
        AlertRule("psi", 0.2, clear=0.3)
    with pytest.raises(ValueError, match="good side"):
        AlertRule("agreement", 0.97, "below", clear=0.9)
    with pytest.raises(ValueError):
        AlertRule("psi", 0.2, clear_after=0)
    with pytest.raises(ValueError, match="two rules"):
        evaluate([PSI, PSI], [], [])


def test_default_rules():
    assert len({r.metric for r in DEFAULT_RULES}) == len(DEFAULT_RULES)
    by = {r.metric: r for r in DEFAULT_RULES}
    assert by["p_adjusted"].direction == "below" and by["p_adjusted"].threshold == 0.005
    assert all(r.clear_after >= 2 for r in DEFAULT_RULES)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.0, 0.5), min_size=1, max_size=40),
    st.floats(0.0, 0.9),
    st.integers(1, 3),
)
def test_state_machine_properties(values, h, k):
    rule = AlertRule("psi", 0.2, hysteresis=h, clear_after=k)
    states, changes = run(rule, values)
    actions = [ch.action for _, ch in changes]
    # opens and closes alternate, starting with an open
    assert actions == ["open", "close"] * (len(actions) // 2) + ["open"] * (len(actions) % 2)
    for t, ch in changes:
        if ch.action == "open":
            assert values[t] > 0.2
        else:  # the last k values all on the good side of the clear level
            assert all(v < rule.clear_level for v in values[t - k + 1 : t + 1])
    # open exactly when a breach has happened since the last close
    for t, is_open in enumerate(states):
        if values[t] > 0.2:
            assert is_open
