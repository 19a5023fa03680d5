"""Telemetry ingest without a broker: validation, de-duplication, the ordering rule, samples,
labels and accuracy, on SQLite and PostgreSQL (the ``ws`` fixture)."""

from __future__ import annotations

import copy
import json
from collections import Counter
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from conftest import store_snapshot
from edgeops.errors import InvalidInput, NotFound
from edgeops.fleet.store import FleetStore
from edgeops.monitoring import validate
from edgeops.monitoring.ingest import Ingestor
from edgeops.monitoring.store import MonitoringStore, check_label
from edgeops.monitoring.validate import (
    REASONS,
    Rejected,
    WindowBatch,
    _fast_telemetry,
    _strict_telemetry,
    check_window,
    parse_label,
    parse_sample,
    parse_telemetry,
    shape_of,
)
from edgeops.store.schema import TelemetryWindow
from edgeops_protocol.messages import event_message
from edgeops_protocol.stats import merge_windows
from edgeops_protocol.topics import device_topic
from telemetry_kit import (
    LABELS,
    label,
    make_baseline,
    model_of,
    register_model,
    sample,
    state,
    telemetry,
    window,
)

FLEET = "lab"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fx(ws):
    """A registered model with a baseline, devices d1 and d2 known, an ingestor, a store."""
    mv = register_model(ws)
    clock = Clock()
    ing = Ingestor(ws.db, FLEET, reorder_window=10, clock=clock)
    ing.ingest([state(FLEET, "d1"), state(FLEET, "d2")])
    return {
        "ws": ws,
        "ing": ing,
        "store": MonitoringStore(ws.db, FLEET),
        "model": model_of(mv),
        "base": make_baseline(),
        "clock": clock,
    }


def _windows(fx, device="d1", seqs=range(1, 6), boot="b0", **kw):
    return [window(FLEET, device, s, fx["model"], fx["base"], boot=boot, **kw) for s in seqs]


def _stored(ws) -> list[tuple]:
    """Every stored window, whole: what 'nothing stored changes' is checked against."""
    with ws.db.session() as s:
        rows = s.execute(select(TelemetryWindow).order_by(TelemetryWindow.id)).scalars()
        return [(w.device_id, w.boot, w.seq, w.count, json.dumps(w.stats)) for w in rows]


# --- pure validation ------------------------------------------------------------------------


def test_reasons_are_stable_strings():
    assert len(set(REASONS)) == len(REASONS)
    issue = {"malformed", "unknown_device", "unknown_model", "wrong_bins", "negative_counts"}
    assert issue | {"duplicate", "out_of_order", "oversized", "wrong_device_topic"} <= set(REASONS)


def test_a_real_window_parses_and_fits_its_shape():
    base = make_baseline()
    msg = window(FLEET, "d1", 3, {"name": "har", "version": 1, "variant": "v", "sha256": "a" * 64},
                 base)  # fmt: skip
    parsed = parse_telemetry(json.dumps(msg).encode())
    assert parsed["stats"] == msg["stats"] and parsed["seq"] == 3
    check_window(parsed["stats"], shape_of("har@1", "v", "a" * 64, {"baseline": base}))


BAD_WINDOWS = [
    (lambda m: m["stats"]["features"][0].__setitem__(0, -1), "negative_counts"),
    (lambda m: m["stats"].__setitem__("count", -5), "negative_counts"),
    (lambda m: m["stats"]["class_counts"].__setitem__(0, 1.5), "malformed"),
    (lambda m: m["stats"]["features"][1].__setitem__(0, True), "malformed"),
    (lambda m: m["stats"]["latency_counts"].__setitem__(0, "3"), "malformed"),
    (lambda m: m["stats"].__setitem__("count", 1), "inconsistent_counts"),
    (lambda m: m["stats"].__setitem__("format", 2), "malformed"),
    (lambda m: m.__setitem__("protocol", 2), "malformed"),
    (lambda m: m.__setitem__("seq", 0), "malformed"),
    (lambda m: m.__setitem__("end", m["start"] - 1), "malformed"),
    (lambda m: m["stats"].__setitem__("features", [[0]] * 5000), "malformed"),
    (lambda m: m["stats"]["feature_non_finite"].pop(), "wrong_bins"),
    (lambda m: m["stats"]["features"][0].__setitem__(slice(0, 2), [-1, None]), "malformed"),
]
STRICTER_HERE = [  # refused here, let through by edgeops_protocol.messages (the registry
    (lambda m: m["model"].__setitem__("sha256", "XYZ"), "malformed"),  # would not match)
    (lambda m: m.__setitem__("boot", "a\nb"), "malformed"),
]


def _some_window() -> dict:
    model = {"name": "h", "version": 1, "variant": "v", "sha256": "a" * 64}
    return window(FLEET, "d1", 1, model, make_baseline())


@pytest.mark.parametrize(("change", "reason"), BAD_WINDOWS + STRICTER_HERE)
def test_bad_windows_are_rejected_with_their_reason(change, reason):
    msg = _some_window()
    change(msg)
    with pytest.raises(Rejected) as exc:
        parse_telemetry(json.dumps(msg).encode())
    assert exc.value.reason == reason


def test_the_protocol_parsers_agree():
    """Contract: the collector's fast validators accept what the protocol's reference
    parsers accept, and refuse what they refuse (where both define a rule)."""
    from edgeops_protocol import messages

    if not hasattr(messages, "parse_telemetry"):
        pytest.skip("edgeops_protocol.messages has no monitoring parsers yet")
    from edgeops_protocol.topics import ProtocolError

    def verdicts(payload: bytes, ours, theirs) -> tuple[bool, bool]:
        try:
            ours(payload)
            mine = True
        except Rejected:
            mine = False
        try:
            theirs(payload)
            ref = True
        except ProtocolError:
            ref = False
        return mine, ref

    good = _some_window()
    assert verdicts(json.dumps(good).encode(), parse_telemetry, messages.parse_telemetry) == (
        True, True)  # fmt: skip
    for change, _ in BAD_WINDOWS:
        msg = _some_window()
        change(msg)
        got = verdicts(json.dumps(msg).encode(), parse_telemetry, messages.parse_telemetry)
        assert got == (False, False), msg
    model = {"name": "h", "version": 1, "variant": "v", "sha256": "a" * 64}
    ok_sample = json.loads(sample(FLEET, "d1", 4, model)[1])
    samples = [
        (ok_sample, True),
        (ok_sample | {"sample_id": "d1/b0/5"}, False),
        (ok_sample | {"seq": 0, "sample_id": "d1/b0/0"}, False),
        (ok_sample | {"input": {"note": "left wrist", "ok": True, "x": [1, None]}}, True),
        (ok_sample | {"input": {"x": [float("nan")]}}, False),
        (ok_sample | {"features": [1] * 5000}, False),
        (ok_sample | {"predicted": ""}, False),
    ]
    for msg, valid in samples:
        got = verdicts(json.dumps(msg).encode(), parse_sample, messages.parse_sample)
        assert got == (valid, valid), msg
    for sid, valid in (("d1/b0/4", True), ("d2/b0/4", False)):
        payload = label(FLEET, "d1", sid, "walk")[1]
        assert verdicts(payload, parse_label, messages.parse_label) == (valid, valid)


def test_size_is_checked_before_parsing():
    with pytest.raises(Rejected) as exc:
        parse_telemetry(b"[" * 300_000)  # would be a RecursionError if parsed
    assert exc.value.reason == "oversized"
    for payload in (b"\xff\xfe", b"[1]", b'{"protocol": 1, "type": "telemetry", "x": NaN}'):
        with pytest.raises(Rejected, match="malformed"):
            parse_telemetry(payload)


def test_samples_and_labels_are_bounded():
    _, payload = sample(FLEET, "d1", 4, {"name": "h", "version": 1, "variant": "v",
                                             "sha256": "a" * 64})  # fmt: skip
    s = parse_sample(payload)
    assert s["sample_id"] == "d1/b0/4" and s["predicted"] == "walk"
    other = json.loads(payload) | {"sample_id": "d2/b0/4"}
    with pytest.raises(Rejected, match="wrong_device_topic"):
        parse_sample(json.dumps(other).encode())
    assert parse_label(label(FLEET, "d1", "d1/b0/4", "run")[1])["label"] == "run"
    with pytest.raises(Rejected, match="oversized"):
        parse_label(label(FLEET, "d1", "d1/b0/4", "x" * 5000)[1])
    with pytest.raises(Rejected, match="malformed"):
        parse_label(label(FLEET, "d1", "d1/b0/4", "")[1])


# --- storing --------------------------------------------------------------------------------


def test_windows_are_stored_once_and_their_counts_add_up(fx):
    ing, store = fx["ing"], fx["store"]
    msgs = _windows(fx)
    first = ing.ingest([telemetry(m) for m in msgs] + [telemetry(msgs[0])])  # a copy in-batch
    assert first.accepted["telemetry"] == 5 and first.rejected == {"duplicate": 1}
    again = ing.ingest([telemetry(m) for m in msgs])  # redelivered later
    assert again.accepted["telemetry"] == 0 and again.rejected == {"duplicate": 5}
    assert store.window_count() == 5
    assert store.counters() == {"duplicate": 6}
    merged = store.merged("har@1", "tflite-int8")
    assert merged == merge_windows([m["stats"] for m in msgs])
    assert merged["count"] == 5 * 20
    assert [w.seq for w in store.windows("har", device="d1")] == [1, 2, 3, 4, 5]
    t_end = msgs[2]["end"]
    assert [w.seq for w in store.windows("har@1", since=t_end)] == [3, 4, 5]
    assert [w.seq for w in store.windows("har@1", until=t_end)] == [1, 2]
    assert store.windows("har@2") == [] and store.windows("other") == []


def test_every_kind_of_bad_input_is_counted_and_changes_nothing(fx):
    ws, ing, store, model, base = fx["ws"], fx["ing"], fx["store"], fx["model"], fx["base"]
    ing.ingest([telemetry(m) for m in _windows(fx, seqs=range(11, 31))])
    before, snapshot = _stored(ws), store_snapshot(ws)
    wrong_bins = window(FLEET, "d1", 40, model, base)
    wrong_bins["stats"]["features"][0].append(0)
    wrong_classes = window(FLEET, "d1", 41, model, base)
    wrong_classes["stats"]["class_counts"].append(0)
    negative = window(FLEET, "d1", 42, model, base)
    negative["stats"]["confidence_counts"][3] = -2
    top = device_topic(FLEET, "d1", "telemetry")
    cases = {
        "malformed": [(top, b"{not json"), ("edgeops/lab/devices/d1/bogus", b"{}")],
        "oversized": [(top, b"{" + b" " * 300_000 + b"}")],
        "unknown_device": [telemetry(window(FLEET, "ghost", 1, model, base))],
        "unknown_model": [
            telemetry(window(FLEET, "d1", 43, {**model, "version": 9}, base)),
            telemetry(window(FLEET, "d1", 44, {**model, "sha256": "b" * 64}, base)),
            telemetry(window(FLEET, "d1", 45, {**model, "variant": "onnx-f32"}, base)),
        ],
        "wrong_bins": [telemetry(wrong_bins), telemetry(wrong_classes)],
        "negative_counts": [telemetry(negative)],
        "duplicate": [  # replays, with other counts: recent, and older than the window
            telemetry(window(FLEET, "d1", 25, model, base, n=99)),
            telemetry(window(FLEET, "d1", 12, model, base, n=99)),
        ],
        "out_of_order": [telemetry(window(FLEET, "d1", 3, model, base))],  # 27 behind 30
        "wrong_device_topic": [
            (top, telemetry(window(FLEET, "d2", 46, model, base))[1]),
            telemetry(window("elsewhere", "d1", 47, model, base)),
        ],
    }  # fmt: skip
    for reason, msgs in cases.items():
        res = ing.ingest(msgs)
        assert res.rejected == {reason: len(msgs)}, reason
        assert not res.accepted
    expected = {"duplicate": 1, **{r: len(m) for r, m in cases.items()}}
    assert store.counters() == expected
    assert _stored(ws) == before
    after = store_snapshot(ws)
    after["rows"].pop("ingest_counters"), snapshot["rows"].pop("ingest_counters")
    assert after == snapshot


def test_out_of_order_rule(fx):
    ing, store = fx["ing"], fx["store"]
    assert ing.ingest([telemetry(m) for m in _windows(fx, seqs=[100])]).accepted["telemetry"] == 1
    res = ing.ingest([telemetry(m) for m in _windows(fx, seqs=[95, 90, 89, 101])])
    assert res.accepted["telemetry"] == 3  # late but within 10 of 101: stored
    assert res.rejected == {"out_of_order": 1}  # 89 is 12 behind 101
    res = ing.ingest([telemetry(m) for m in _windows(fx, seqs=[130, 115])])  # same batch
    assert res.accepted["telemetry"] == 1 and res.rejected == {"out_of_order": 1}
    res = ing.ingest([telemetry(m) for m in _windows(fx, seqs=[1], boot="b1")])  # a new boot
    assert res.accepted["telemetry"] == 1
    fresh = Ingestor(fx["ws"].db, FLEET, reorder_window=10)  # reads the newest from the store
    res = fresh.ingest([telemetry(m) for m in _windows(fx, seqs=[121, 2, 119])])
    assert res.accepted["telemetry"] == 1 and res.rejected == {"out_of_order": 2}
    assert sorted(w.seq for w in store.windows(device="d1") if w.boot == "b0") == [
        90, 95, 100, 101, 121, 130]  # fmt: skip


def test_a_new_device_or_model_is_accepted_once_registered(fx):
    ws, ing, model, base, clock = fx["ws"], fx["ing"], fx["model"], fx["base"], fx["clock"]
    w = telemetry(window(FLEET, "d9", 1, model, base))
    assert ing.ingest([w]).rejected == {"unknown_device": 1}
    assert ing.ingest([state(FLEET, "d9"), w]).accepted == {"state": 1, "telemetry": 1}
    v2 = {**model, "version": 2}  # same bytes, so the same sha256, once registered
    w2 = telemetry(window(FLEET, "d1", 50, v2, base))
    assert ing.ingest([w2]).rejected == {"unknown_model": 1}
    register_model(ws)
    assert ing.ingest([w2]).rejected == {"unknown_model": 1}  # still cached as unknown
    clock.t += 10
    assert ing.ingest([w2]).accepted == {"telemetry": 1}
    assert fx["store"].counters() == {"unknown_device": 1, "unknown_model": 2}


def test_samples_labels_and_on_device_accuracy(fx):
    ing, store, model = fx["ing"], fx["store"], fx["model"]
    preds = {1: "walk", 2: "run", 3: "idle", 4: "walk"}
    msgs = [sample(FLEET, "d1", i, model, p) for i, p in preds.items()]
    msgs += [sample(FLEET, "d2", 1, model, "run"), msgs[0]]
    res = ing.ingest(msgs)
    assert res.accepted["samples"] == 5 and res.rejected == {"duplicate": 1}
    bad = json.loads(sample(FLEET, "d1", 9, model)[1]) | {"predicted": "fly"}
    assert ing.ingest([(msgs[0][0], json.dumps(bad).encode())]).rejected == {"wrong_shape": 1}
    res = ing.ingest([
        label(FLEET, "d1", "d1/b0/1", "walk"),  # right
        label(FLEET, "d1", "d1/b0/2", "walk"),  # wrong (predicted run)
        label(FLEET, "d1", "d1/b0/404", "walk"),
        label(FLEET, "d1", "d2/b0/1", "run"),  # d1 may not label d2's sample
    ])  # fmt: skip
    assert res.accepted == {"labels": 2}
    assert res.rejected == {"unknown_sample": 1, "wrong_device_topic": 1}
    assert ing.ingest([label(FLEET, "d1", "d1/b0/1", "walk")]).rejected == {"duplicate": 1}
    assert store.add_label("d1/b0/3", "idle") == "added"  # the HTTP API / CLI path
    assert store.add_label("d2/b0/1", "idle") == "added"
    assert store.add_label("d2/b0/1", "run") == "changed"  # a correction
    assert store.add_label("d2/b0/1", "run") == "unchanged"
    with pytest.raises(NotFound):
        store.add_label("d1/b0/404", "walk")
    with pytest.raises(InvalidInput):
        store.add_label("d1/b0/4", "")
    acc = store.accuracy()
    assert (acc.labelled, acc.correct, acc.value) == (4, 3, 0.75)
    by = store.accuracy("har", by_device=True)
    assert {d: (a.labelled, a.correct) for d, a in by.items()} == {"d1": (3, 2), "d2": (1, 1)}
    assert store.accuracy("har@2").value is None
    assert [s.sample_id for s in store.samples(device="d1", labelled=False)] == ["d1/b0/4"]
    assert store.sample("d1/b0/2").label == "walk" and LABELS


def test_events_are_recorded_once_by_collector_and_controller_alike(fx):
    ws, ing = fx["ws"], fx["ing"]
    ev = dict(fleet=FLEET, device="d1", boot="b0", ts=5.0, seq=3, deployment="r/d1/3",
              rollout="r-1", event="activated", reason="")  # fmt: skip
    msg = (device_topic(FLEET, "d1", "events"), event_message(**ev))
    assert ing.ingest([msg, msg]).accepted == {"events": 1}
    fleet = FleetStore(ws.db, FLEET)
    assert fleet.apply_event(ev) is False  # the rollout controller's path: already there
    assert fleet.apply_event({**ev, "ts": 6.0}) is True  # a new event
    assert ing.ingest([(msg[0], event_message(**{**ev, "device": "ghost"}))]).rejected == {
        "wrong_device_topic": 1}  # fmt: skip
    assert len(fleet.events(rollout="r-1")) == 2


# --- the fast paths give the strict verdicts (issue #5: ingest speed) ---------------------------

TRICKY = [
    -1, 0, 1, 7, 2**53, 2**53 + 1, 2**63, 2**64 - 1, 2**64, 10**400, -(10**400), 0.0, 1.5, -0.0,
    1e308, True, False, None, "3", "", "b0\n", [], [0], [[0]], {}, {"a": 1},
]  # fmt: skip


def _verdict(fn, *args):
    try:
        return fn(*args)
    except Rejected as exc:
        return exc.reason


def _paths(msg) -> list[tuple]:
    """Every place of a window a value can be changed at: (container path, key or index)."""
    out: list[tuple] = [((), k) for k in msg] + [(("model",), k) for k in msg["model"]]
    stats = msg["stats"]
    for k, v in stats.items():
        out.append((("stats",), k))
        if isinstance(v, list):
            out += [(("stats", k), i) for i in range(len(v))]
    for j, h in enumerate(stats["features"]):
        out += [(("stats", "features", j), i) for i in range(len(h))]
    return out


def _find(msg, path, key):
    """The container at ``path`` if it still holds ``key`` (earlier changes may have
    removed or replaced what was there), else None."""
    node = msg
    for k in (*path, key):
        if (isinstance(node, dict) and k in node) or (
            isinstance(node, list) and type(k) is int and k < len(node)
        ):
            parent, node = node, node[k]
        else:
            return None
    return parent


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_the_fast_window_parser_gives_the_strict_verdict(data):
    """_fast_telemetry either gives up (None) or returns exactly what the strict parser
    returns; so parse_telemetry, which falls back on the strict parser, has its verdicts."""
    msg = _some_window()
    paths = _paths(msg)
    for _ in range(data.draw(st.integers(0, 3))):
        where, key = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["set", "delete", "append", "add"]))
        target = _find(msg, where, key)
        if target is None:
            continue
        value = copy.deepcopy(data.draw(st.sampled_from(TRICKY)))
        if action == "set":
            target[key] = value
        elif action == "delete":
            del target[key]
        elif action == "append" and isinstance(target[key], list):
            target[key].append(value)
        elif action == "add" and type(target[key]) is int:
            target[key] += data.draw(st.sampled_from([1, 5, 1000, -1]))
    payload = json.dumps(msg).encode()
    strict = _verdict(_strict_telemetry, payload)
    assert _verdict(parse_telemetry, payload) == strict
    try:
        obj = validate.loads(payload)
    except ValueError:
        return
    if isinstance(obj, dict):
        fast = _fast_telemetry(obj, payload)
        assert fast is None or fast == strict, (fast, strict)


def test_the_fast_paths_take_a_plain_window():
    """...and they are taken: a well-formed window never needs the strict parser."""
    payload = json.dumps(_some_window()).encode()
    fast = _fast_telemetry(validate.loads(payload), payload)
    assert fast is not None and fast == _strict_telemetry(payload)
    assert [type(fast[k]) for k in ("start", "end")] == [float, float]
    assert list(fast["stats"]) == list(_strict_telemetry(payload)["stats"])  # same key order


_PREPARER: dict[str, Ingestor] = {}


def _batch_case(data, i: int) -> tuple[str, bytes]:
    """A window of d1/d2 with, often, one change that only a check of the whole batch or
    the topic sees: a histogram counting more than ``count``, an empty or a huge one."""
    msg = _some_window()
    msg["seq"] = i + 1
    st_ = msg["stats"]
    change = data.draw(st.sampled_from(["none", "over", "over_nf", "empty", "huge", "layout",
                                        "topic", "over_topic", "bool", "float"]))  # fmt: skip
    j = data.draw(st.integers(0, len(st_["features"]) - 1))
    if change in ("over", "over_topic"):
        st_["features"][j][1] += st_["count"] + 1 - sum(st_["features"][j])
    elif change == "over_nf":
        st_["feature_non_finite"][j] += st_["count"] + 1 - sum(st_["features"][j])
    elif change == "empty":
        st_["features"][j] = []
    elif change == "huge":
        st_["features"][j][0] = data.draw(st.sampled_from([2**60, 2**64 - 1]))
    elif change == "layout":
        st_["features"][j].append(0)
    elif change == "bool":
        st_["features"][j][0] = True
    elif change == "float":
        st_["features"][j][0] = 1.0
    device = "d2" if change in ("topic", "over_topic") else "d1"
    return device_topic(FLEET, device, "telemetry"), json.dumps(msg).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_batch_is_judged_as_its_windows_one_by_one(tmp_path_factory, data):
    """Ingestor.prepare checks the feature sums of a whole batch at once (WindowBatch);
    what it accepts and rejects, and why, is what parsing each window alone gives."""
    from edgeops.store import Database

    if "ing" not in _PREPARER:  # prepare() needs no database; one for every example
        folder = tmp_path_factory.mktemp("batch")
        _PREPARER["ing"] = Ingestor(Database(f"sqlite:///{folder / 'x.db'}"), FLEET)
    ing = _PREPARER["ing"]
    n = data.draw(st.integers(1, 12))
    msgs = [_batch_case(data, i) for i in range(n)]
    batch = ing.prepare(msgs)
    want_ok, want_rejected = [], Counter()
    for topic, payload in msgs:
        try:
            kind, msg, ticket = ing._parse(topic, payload)
        except Rejected as exc:
            want_rejected[exc.reason] += 1
            continue
        assert kind == "telemetry" and ticket is None
        want_ok.append((topic, msg))
    assert batch.parsed["telemetry"] == want_ok
    assert batch.rejected.rejected == want_rejected


def test_window_batch_sums_every_layout_and_falls_back_on_huge_counts():
    base = make_baseline()
    model = {"name": "h", "version": 1, "variant": "v", "sha256": "a" * 64}
    big = make_baseline(n_features=5, bins=6)
    msgs = [window(FLEET, "d1", s, model, base) for s in range(1, 5)]
    msgs += [window(FLEET, "d1", s, model, big) for s in range(5, 8)]
    msgs[1]["stats"]["features"][2][0] += 1  # one over, in each layout
    msgs[5]["stats"]["feature_non_finite"][4] += 1
    batch = WindowBatch()
    tickets = [parse_telemetry(json.dumps(m).encode(), None, batch)["_ticket"] for m in msgs]
    assert batch.failed() == {tickets[1], tickets[5]}
    huge = window(FLEET, "d1", 9, model, base)
    huge["stats"]["features"][0][0] = 2**63  # uint64 sums could wrap: added up in Python
    for m in (msgs[0], msgs[1], huge):
        parse_telemetry(json.dumps(m).encode(), None, batch)
    assert len(batch.failed()) == 2
    assert batch.failed() == set()  # (emptied)


# --- rules the strict parser enforces now ----------------------------------------------------


def test_protocol_true_or_a_float_is_not_protocol_1():
    """As edgeops_protocol.messages.decode: JSON true and 1.0 compare equal to 1 in Python."""
    for version in (True, 1.0):
        msg = _some_window() | {"protocol": version}
        with pytest.raises(Rejected, match="malformed"):
            parse_telemetry(json.dumps(msg).encode())
    _, payload = label(FLEET, "d1", "d1/b0/4", "run")
    with pytest.raises(Rejected, match="malformed"):
        parse_label(json.dumps(json.loads(payload) | {"protocol": True}).encode())


def test_a_final_newline_is_not_printable_and_huge_numbers_are_malformed():
    for change in (
        lambda m: m.__setitem__("boot", "b0\n"),
        lambda m: m["model"].__setitem__("sha256", "a" * 64 + "\n"),
        lambda m: m["model"].__setitem__("name", "h\n"),
        lambda m: m.__setitem__("start", 10**400),  # float() would overflow
        lambda m: m["stats"].__setitem__("latency_sum_ms", 10**400),
    ):
        msg = _some_window()
        change(msg)
        with pytest.raises(Rejected) as exc:
            parse_telemetry(json.dumps(msg).encode())
        assert exc.value.reason == "malformed"
    with pytest.raises(InvalidInput):
        check_label("walk\n")


# --- storing: atomic batches, what is stored ----------------------------------------------------


def test_a_batch_that_fails_before_its_commit_stores_nothing(fx, monkeypatch):
    ws, ing, store = fx["ws"], fx["ing"], fx["store"]
    ing.ingest([telemetry(m) for m in _windows(fx, seqs=range(1, 4))])
    before, snapshot = _stored(ws), store_snapshot(ws)
    msgs = [telemetry(m) for m in _windows(fx, seqs=range(4, 9))] + [(
        device_topic(FLEET, "d1", "telemetry"), b"{not json")]  # fmt: skip

    def boom(*args):
        raise RuntimeError("crash after the windows' INSERT, before the commit")

    monkeypatch.setattr(ing, "_count", boom)  # runs after the windows are inserted
    with pytest.raises(RuntimeError):
        ing.ingest(msgs)
    assert _stored(ws) == before and store_snapshot(ws) == snapshot
    monkeypatch.undo()
    res = ing.ingest(msgs)  # redelivered: all of it, once
    assert res.accepted == {"telemetry": 5} and res.rejected == {"malformed": 1}
    assert store.window_count() == 8 and store.counters() == {"malformed": 1}


def test_stored_windows_keep_their_values(fx):
    ws, ing = fx["ws"], fx["ing"]
    msgs = _windows(fx, seqs=[7])
    ing.ingest([telemetry(m) for m in msgs])
    with ws.db.session() as s:
        row = s.execute(select(TelemetryWindow)).scalar_one()
        assert (row.fleet, row.device_id, row.boot, row.seq) == (FLEET, "d1", "b0", 7)
        assert (row.start, row.end, row.count) == (msgs[0]["start"], msgs[0]["end"], 20)
        assert row.stats == msgs[0]["stats"] and row.model_ref == "har@1"
        assert row.received_at.tzinfo is not None
        assert abs((datetime.now(timezone.utc) - row.received_at).total_seconds()) < 600


def test_a_new_sqlite_store_has_16_kib_pages(tmp_path):
    from edgeops.store import Database

    db = Database(f"sqlite:///{tmp_path / 'new.db'}")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == 16384
    db.close()
