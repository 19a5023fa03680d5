"""Monitoring messages of the protocol: telemetry windows, samples and labels, parsed strictly.

The collector on the server trusts nothing a device sends; these parsers are what
it runs. Every count must be a non-negative integer, no histogram may count more
values than its window had predictions, lists are bounded, and junk of any kind is
a ProtocolError, never a crash.
"""

from __future__ import annotations

import contextlib
import copy
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeops_protocol.baseline import baseline_profile
from edgeops_protocol.messages import (
    LATENCY_BINS,
    MAX_FEATURES,
    label_message,
    parse_label,
    parse_sample,
    parse_state,
    parse_telemetry,
    sample_message,
    state_message,
    telemetry_message,
)
from edgeops_protocol.stats import LATENCY_EDGES_MS, WindowStats
from edgeops_protocol.topics import ProtocolError

REF = {"name": "har", "version": 3, "variant": "tflite-int8", "sha256": "a" * 64}


def _window(seed: int = 0, n: int = 50) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 3))
    base = baseline_profile(x, rng.dirichlet([1, 1, 1], 200), ["a", "b", "c"], ["x", "y", "z"], 4)
    w = WindowStats(base)
    for i in range(n):
        row = x[i].copy()
        if i == 3:
            row[1] = np.nan
        outputs = None if i == 5 else rng.dirichlet([1, 1, 1])
        w.update(row * 3, outputs, latency_ms=float(i % 7), error=outputs is None)
    return w.window()


def telemetry(**over) -> dict:
    msg = {
        "fleet": "lab",
        "device": "pi-07",
        "boot": "3-ab12cd34",
        "seq": 1,
        "start": 1795760000.0,
        "end": 1795760060.0,
        "model": dict(REF),
        "stats": _window(),
    }
    msg.update(over)
    return msg


def sample(**over) -> dict:
    msg = {
        "fleet": "lab",
        "device": "pi-07",
        "boot": "3-ab12cd34",
        "seq": 4,
        "ts": 1795760012.5,
        "sample_id": "pi-07/3-ab12cd34/4",
        "model": dict(REF),
        "input": {"ax": [0.1, None, 0.3], "mode": "walk", "ok": True, "n": 3},
        "features": [0.5, -1.25, 3],
        "outputs": [0.1, 0.9],
        "predicted": "walk",
    }
    msg.update(over)
    return msg


def _raw(kind: str, fields: dict) -> bytes:
    return json.dumps({"protocol": 1, "type": kind, **fields}).encode()


def test_messages_round_trip():
    t = telemetry()
    parsed = parse_telemetry(telemetry_message(**t))
    assert parsed == t  # the window of a real WindowStats passes as it is
    assert parsed["stats"]["count"] == 50 and parsed["stats"]["errors"] == 1
    assert parsed["stats"]["feature_non_finite"] == [0, 1, 0]
    assert len(parsed["stats"]["latency_counts"]) == LATENCY_BINS == len(LATENCY_EDGES_MS) + 1
    s = sample()
    assert parse_sample(sample_message(**s)) == s
    assert parse_sample(sample_message(**sample(input=None)))["input"] is None
    label = {"fleet": "lab", "device": "pi-07", "sample_id": s["sample_id"], "label": "run"}
    assert parse_label(label_message(**label, ts=5.0)) == {**label, "ts": 5.0}


def test_builders_refuse_values_that_are_not_json():
    with pytest.raises(ValueError):
        sample_message(**sample(features=[float("nan")]))


def _stats(**over) -> dict:
    stats = copy.deepcopy(_window())
    stats.update(over)
    return stats


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"seq": 0}, "'seq' must be an integer >= 1"),
        ({"seq": True}, "'seq' must be an integer"),
        ({"end": 1795759999.0}, "'end' must not be before 'start'"),
        ({"model": None}, "'model' must name the model"),
        ({"model": {**REF, "version": 0}}, "'version' must be an integer >= 1"),
        ({"device": "a/b"}, "not valid"),
        ({"boot": 7}, "'boot' must be a string"),
        ({"stats": []}, "'stats' must be an object"),
        ({"stats": _stats(format=2)}, "unsupported stats format 2"),
        ({"stats": _stats(count=-1)}, "'count' must be an integer >= 0"),
        ({"stats": _stats(count=1.5)}, "'count' must be an integer"),
        ({"stats": _stats(errors=40, non_finite_outputs=11)}, "add up to more than count"),
        ({"stats": _stats(class_counts=[-1, 2, 3])}, "integers >= 0"),
        ({"stats": _stats(class_counts=[1, True, 3])}, "integers >= 0"),
        ({"stats": _stats(class_counts=[1.0, 2, 3])}, "integers >= 0"),
        ({"stats": _stats(class_counts=[])}, "list of 1 to"),
        ({"stats": _stats(class_counts=[40, 40])}, "counts more than"),
        ({"stats": _stats(confidence_counts=[0, 0])}, "list of 3 to"),
        ({"stats": _stats(latency_counts=[0] * 15)}, f"list of {LATENCY_BINS} to"),
        ({"stats": _stats(latency_counts=[50] + [0] * 14 + [1])}, "counts more than"),
        ({"stats": _stats(features=[[0, 1, 2]] * 4)}, "'feature_non_finite' must be a list of 4"),
        ({"stats": _stats(features=[[0, 60, 0]] * 3)}, "counts more than"),
        ({"stats": _stats(features=[[0, 49, 0], [0, 50, 0], [0, 50, 0]])}, "feature 1 counts"),
        ({"stats": _stats(features="x")}, "'features' must be a list"),
        ({"stats": _stats(features=[[0, 1]] * 3)}, "list of 3 to"),
        ({"stats": _stats(features=[[0] * 1027] * 3)}, "list of 3 to 1026"),
        ({"stats": _stats(latency_sum_ms=-1.0)}, "must be >= 0"),
        ({"stats": _stats(latency_max_ms="1")}, "must be a finite number"),
        ({"stats": _stats(count=2**60)}, "'count' must be an integer"),
    ],
)
def test_bad_telemetry(fields, reason):
    with pytest.raises(ProtocolError, match=reason):
        parse_telemetry(_raw("telemetry", telemetry(**fields)))


def test_telemetry_size_and_length_bounds():
    with pytest.raises(ProtocolError, match="over the"):
        parse_telemetry(telemetry_message(**telemetry()), max_bytes=100)
    many = _stats(
        count=10,
        errors=0,
        non_finite_outputs=0,
        features=[[0, 0, 0]] * (MAX_FEATURES + 1),
        feature_non_finite=[0] * (MAX_FEATURES + 1),
    )
    with pytest.raises(ProtocolError, match=f"at most {MAX_FEATURES}"):
        parse_telemetry(_raw("telemetry", telemetry(stats=many)), max_bytes=1 << 24)
    with pytest.raises(ProtocolError, match="non-standard JSON constant"):
        parse_telemetry(telemetry_message(**telemetry()).replace(b"1795760000.0", b"NaN"))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"sample_id": "pi-07/other-boot/4"}, "'<device>/<boot>/<seq>'"),
        ({"sample_id": "x" * 201}, "at most 200"),
        ({"seq": -4}, "'seq' must be an integer >= 1"),
        ({"features": ["0.5"]}, "finite numbers only"),
        ({"features": [True]}, "finite numbers only"),
        ({"features": [None]}, "finite numbers only"),
        ({"outputs": [0.5, None]}, "finite numbers only"),
        ({"predicted": None}, "'predicted' must be a string"),
        ({"predicted": ""}, "must not be empty"),
        ({"features": [0.0] * 4097}, "at most 4096"),
        ({"outputs": {"a": 1}}, "'outputs' must be a list"),
        ({"input": {"ax": {"nested": 1}}}, "scalar or a list of scalars"),
        ({"input": {"ax": [[1, 2]]}}, "scalars only"),
        ({"input": {f"c{i}": 0 for i in range(257)}}, "at most 256 columns"),
        ({"input": {"c" * 129: 0}}, "over 128 characters"),
        ({"input": {"s": "x" * 1025}}, "scalar or a list"),
        ({"input": [1, 2]}, "'input' must be null or an object"),
        ({"predicted": 3}, "'predicted' must be a string"),
        ({"model": None}, "'model' must name the model"),
        ({"ts": 10**400}, "'ts' must be a finite number"),
    ],
)
def test_bad_samples(fields, reason):
    with pytest.raises(ProtocolError, match=reason):
        parse_sample(_raw("sample", sample(**fields)))


def test_sample_size_limit():
    big = sample(input={"ax": [0.123456789] * 4096, "ay": [0.123456789] * 4096})
    payload = sample_message(**big)
    assert len(payload) > 64 * 1024
    parse_sample(payload)
    with pytest.raises(ProtocolError, match="over the"):
        parse_sample(payload, max_bytes=64 * 1024)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"label": ""}, "must not be empty"),
        ({"label": "x" * 129}, "at most 128"),
        ({"label": 1}, "'label' must be a string"),
        ({"sample_id": "pi-08/b/1"}, "a sample of the device that labels it"),
        ({"sample_id": None}, "'sample_id' must be a string"),
        ({"ts": "now"}, "'ts' must be a finite number"),
        ({"fleet": "a+b"}, "not valid"),
    ],
)
def test_bad_labels(fields, reason):
    label = {"fleet": "lab", "device": "pi-07", "sample_id": "pi-07/b/1", "label": "run", "ts": 1.0}
    with pytest.raises(ProtocolError, match=reason):
        parse_label(_raw("label", {**label, **fields}))


def test_state_reports_outbox_dropped():
    base = {
        "fleet": "lab",
        "device": "pi-07",
        "online": True,
        "boot": "b",
        "ts": 1.0,
        "hardware": "rpi4",
        "runtimes": [],
        "accepted_seq": 0,
        "model": None,
        "previous": None,
    }
    assert parse_state(state_message(**base))["outbox_dropped"] is None  # older agents
    assert parse_state(state_message(**base, outbox_dropped=12))["outbox_dropped"] == 12
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ProtocolError, match="'outbox_dropped' must be an integer"):
            parse_state(state_message(**base, outbox_dropped=bad))


def test_huge_integers_are_errors_not_crashes():
    for parse, kind, fields in (
        (parse_state, "state", {"fleet": "a", "device": "b", "online": False, "ts": 10**400}),
        (parse_label, "label", {"fleet": "a", "device": "b", "sample_id": "b/x/1", "ts": 10**400}),
    ):
        with pytest.raises(ProtocolError):
            parse(_raw(kind, {**fields, "label": "x"}))


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


def _mutate(value, data):
    """Replace one randomly chosen node of a JSON value with random JSON."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        return {**value, key: _mutate(value[key], data)}
    if isinstance(value, list) and value and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(value) - 1))
        return [*value[:i], _mutate(value[i], data), *value[i + 1 :]]
    return data.draw(_json)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data())
def test_parsers_never_crash_on_mutated_messages(data):
    kind, parse, valid = data.draw(
        st.sampled_from(
            [
                ("telemetry", parse_telemetry, telemetry()),
                ("sample", parse_sample, sample()),
                ("label", parse_label, {"fleet": "a", "device": "b", "sample_id": "b/c/1"}),
            ]
        )
    )
    key = data.draw(st.sampled_from(sorted(valid)))
    payload = _raw(kind, {**valid, key: _mutate(valid[key], data)})
    with contextlib.suppress(ProtocolError):
        parsed = parse(payload)
        if kind == "telemetry":  # whatever passes is consistent
            stats = parsed["stats"]
            assert all(c >= 0 for f in stats["features"] for c in f)
            assert sum(stats["class_counts"]) <= stats["count"]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=400) | _json.map(lambda v: json.dumps(v).encode()))
def test_parsers_never_crash_on_junk(payload):
    for parse in (parse_telemetry, parse_sample, parse_label):
        with contextlib.suppress(ProtocolError):
            parse(payload)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.integers(0, 2**16), st.integers(0, 200))
def test_every_real_window_parses(seed, n):
    stats = _window(seed, n)
    assert parse_telemetry(telemetry_message(**telemetry(stats=stats)))["stats"] == stats
