"""On-device monitoring: statistics windows, the durable outbox, sampling and labels.

The first half runs the parts without a broker (a Predictor with Telemetry attached,
an injectable clock, the Outbox on a temporary folder). The second half runs real
agents against Mosquitto and collects what they send the way the server's
collector does: a persistent-session QoS 1 subscriber, so nothing sent while it
reconnects is lost and the tests can count every window by ``(boot, seq)``.
"""

from __future__ import annotations

import doctest
import importlib
import json
import random
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edgeops_agent.agent import Agent
from edgeops_agent.errors import PredictionError
from edgeops_agent.outbox import Outbox, ack_key
from edgeops_agent.runtime import load_runner
from edgeops_agent.sampling import Sampler, SamplingBudget, budget_from
from edgeops_agent.serve import LoadedModel, Predictor
from edgeops_agent.telemetry import MAX_PENDING, Telemetry, window_baseline
from edgeops_protocol.baseline import baseline_profile
from edgeops_protocol.histogram import histogram
from edgeops_protocol.messages import (
    ACK_KINDS,
    ack_message,
    parse_label,
    parse_sample,
    parse_state,
    parse_telemetry,
)
from edgeops_protocol.stats import WindowStats
from edgeops_protocol.topics import device_topic, parse_device_topic
from test_agent_kit import FEATURES, Server, agent_config, make_manifest, onnx_model, wait_until
from test_agent_kit import keys_fixture as keys_fixture
from test_agent_kit import server_fixture as server_fixture

DEV = "dev-1"
LABELS = ["no", "yes"]


def baseline(seed: int = 0) -> dict:
    """Edges over standardized features (the model's inputs) and its two classes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(500, 4))
    return baseline_profile(x, rng.dirichlet([1, 1], 500), FEATURES, LABELS, bins=5)


def loaded(seed: int = 0, seq: int = 1, **serving: Any) -> LoadedModel:
    model = onnx_model(seed)
    manifest = make_manifest(
        model, fleet="lab", device=DEV, seq=seq, serving={"baseline": baseline(), **serving}
    )
    return LoadedModel.build(load_runner("onnx", model.data), manifest)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wired(clock: Clock | None = None, **kw: Any) -> tuple[Predictor, Telemetry]:
    predictor = Predictor()
    telemetry = Telemetry(fleet="lab", device=DEV, clock=clock or Clock(), **kw)
    telemetry.attach(predictor)
    telemetry.start("7-boot")
    return predictor, telemetry


def drained(telemetry: Telemetry, kind: str = "telemetry") -> list[dict]:
    items, lost = telemetry.drain()
    assert lost == 0
    parse = {"telemetry": parse_telemetry, "samples": parse_sample, "labels": parse_label}[kind]
    return [parse(p) for t, p in items if t.endswith("/" + kind)]


def expected_window(model: LoadedModel, x: np.ndarray, out: np.ndarray) -> dict:
    base, problem = window_baseline(model.manifest, x.shape[1], out.shape[1])
    assert problem is None
    w = WindowStats(base)
    for row, scores in zip(x, out):  # noqa: B905 - Python 3.9
        w.update(row, scores, latency_ms=0.0)
    return w.window()


def same_counts(got: dict, want: dict) -> None:
    """Equal in everything but the measured latencies (which only add up to the count)."""
    skip = ("latency_counts", "latency_sum_ms", "latency_max_ms")
    assert {k: v for k, v in got.items() if k not in skip} == {
        k: v for k, v in want.items() if k not in skip
    }
    assert sum(got["latency_counts"]) == got["count"] and got["latency_sum_ms"] > 0


# --- windows ------------------------------------------------------------------------------


def test_windows_count_what_windowstats_counts_and_close_every_n_predictions():
    predictor, telemetry = wired(window_count=10, window_s=0)
    model = loaded()
    predictor.load(model)
    x = np.random.default_rng(1).normal(size=(25, 4)).astype(np.float32) * 1.5
    x[4, 2] = np.nan
    outs = []
    at = 0
    for size in (1, 3, 7, 10, 4):  # 25 rows in calls that straddle the window boundaries
        results = predictor.predict_features(x[at : at + size])
        outs += [[np.nan if s is None else s for s in r["scores"]] for r in results]
        at += size
    out = np.array(outs, dtype=np.float32)
    windows = drained(telemetry)
    assert [(w["seq"], w["stats"]["count"]) for w in windows] == [(1, 10), (2, 10)]
    telemetry.close()
    windows += drained(telemetry)
    assert [w["seq"] for w in windows] == [1, 2, 3] and windows[2]["stats"]["count"] == 5
    edges = [f["edges"] for f in baseline()["features"]]
    for k, w in enumerate(windows):
        rows = slice(10 * k, 10 * k + 10)
        same_counts(w["stats"], expected_window(model, x[rows], out[rows]))
        # ... and independently of WindowStats: the protocol's histogram rule, the argmax
        for j in range(4):
            assert w["stats"]["features"][j] == histogram(x[rows, j], edges[j])
        finite = np.isfinite(out[rows]).all(axis=1)  # a NaN input gives NaN scores
        predicted = out[rows][finite].argmax(axis=1)
        assert w["stats"]["class_counts"] == [int((predicted == c).sum()) for c in (0, 1)]
        assert w["boot"] == "7-boot" and w["device"] == DEV
        assert w["model"] == {
            "name": "demo",
            "version": 1,
            "variant": "onnx-f32",
            "sha256": model.manifest["artifact"]["sha256"],
        }
    assert windows[0]["stats"]["feature_non_finite"] == [0, 0, 1, 0]  # row 4 had a NaN
    assert windows[0]["stats"]["non_finite_outputs"] == 1  # and so had its scores


def test_time_windows_start_at_their_first_prediction_and_model_changes_close_them():
    clock = Clock(1000.0)
    predictor, telemetry = wired(clock, window_count=0, window_s=5)
    v1, v2 = loaded(0, seq=1), loaded(1, seq=2)
    predictor.load(v1)
    telemetry.tick()
    assert drained(telemetry) == []  # no prediction, no window
    clock.now = 1002.0
    predictor.predict_features(onnx_model(0).matrix[:3])
    clock.now = 1006.9
    telemetry.tick()
    assert drained(telemetry) == []
    clock.now = 1007.0
    telemetry.tick()
    (w1,) = drained(telemetry)
    assert (w1["seq"], w1["start"], w1["end"], w1["stats"]["count"]) == (1, 1002.0, 1007.0, 3)
    clock.now = 1008.0
    predictor.predict_features(onnx_model(0).matrix[:2])
    predictor.load(v2)  # the agent activates another model: its window is closed on the tick
    clock.now = 1009.0
    telemetry.tick()
    (w2,) = drained(telemetry)
    assert w2["model"]["sha256"] == v1.manifest["artifact"]["sha256"]
    assert (w2["seq"], w2["stats"]["count"]) == (2, 2)
    predictor.predict_features(onnx_model(1).matrix[:4])
    # a call that began on v1 and finishes after the switch is counted apart, not in v2's window
    assert telemetry.on_predictions(v1, None, onnx_model(0).matrix[:1], None, 1.0) is None
    assert telemetry.counters.get("telemetry_stale_predictions") == 1
    telemetry.close()
    (w3,) = drained(telemetry)
    assert w3["model"]["sha256"] == v2.manifest["artifact"]["sha256"]
    assert (w3["seq"], w3["stats"]["count"]) == (3, 4)


def test_errors_and_non_finite_outputs_are_counted_apart():
    predictor, telemetry = wired(window_count=0, window_s=60)
    model = loaded()
    corrupt = LoadedModel.build(model.runner, model.manifest, corrupt=True)
    predictor.load(corrupt)
    predictor.predict_features(onnx_model(0).matrix[:3])
    predictor.load(model)
    predictor.predict_features(onnx_model(0).matrix[:2])

    class Broken:
        inputs, outputs = model.runner.inputs, model.runner.outputs

        def predict(self, x):
            raise RuntimeError("boom")

    broken = LoadedModel.build(Broken(), model.manifest)  # type: ignore[arg-type]
    predictor.load(broken)
    for _ in range(2):
        with pytest.raises(PredictionError):
            predictor.predict_features(onnx_model(0).matrix[:1])
    with pytest.raises(PredictionError):  # not the model's input shape: not in any window
        predictor.predict_features([[1.0, 2.0]])
    telemetry.close()
    corrupt_w, good_w, broken_w = (w["stats"] for w in drained(telemetry))
    assert (corrupt_w["count"], corrupt_w["non_finite_outputs"], corrupt_w["errors"]) == (3, 3, 0)
    assert sum(corrupt_w["class_counts"]) == 0 and sum(corrupt_w["confidence_counts"]) == 0
    assert (good_w["count"], good_w["non_finite_outputs"], good_w["errors"]) == (2, 0, 0)
    assert (broken_w["count"], broken_w["errors"]) == (2, 2)
    assert sum(broken_w["features"][0]) == 2  # what the model was asked is still counted
    assert telemetry.counters.get("telemetry_misshapen_rows") == 1


def test_a_baseline_that_does_not_fit_the_model_counts_no_features():
    predictor, telemetry = wired(window_count=0)
    model = loaded()
    bad = dict(model.manifest, serving={**model.manifest["serving"], "baseline": baseline_profile(
        np.zeros((10, 3)) + np.arange(3), np.eye(2)[[0, 1] * 5], ["a", "b", "c"], LABELS
    )})  # fmt: skip
    predictor.load(LoadedModel.build(model.runner, bad))
    predictor.predict_features(onnx_model(0).matrix)
    telemetry.close()
    (w,) = drained(telemetry)
    assert w["stats"]["features"] == [] and w["stats"]["count"] == 8
    assert sum(w["stats"]["class_counts"]) == 8
    assert telemetry.counters.get("telemetry_baseline_unusable") == 1
    base, problem = window_baseline({"serving": {"baseline": {"features": [{"x": 1}]}}}, 1, 3)
    assert base["outputs"]["labels"] == ["0", "1", "2"] and "cannot be used" in problem


def test_statistics_off_makes_no_windows():
    predictor, telemetry = wired(stats_enabled=False, window_count=1)
    predictor.load(loaded())
    predictor.predict_rows(onnx_model(0).rows)
    telemetry.tick()
    telemetry.close()
    assert telemetry.drain() == ([], 0)


def test_a_full_hand_off_queue_drops_its_oldest_and_counts_them():
    predictor, telemetry = wired(window_count=1, window_s=0)
    predictor.load(loaded())
    for _ in range(MAX_PENDING + 5):
        predictor.predict_features(onnx_model(0).matrix[:1])
    items, lost = telemetry.drain()
    assert lost == 5 and len(items) == MAX_PENDING
    assert parse_telemetry(items[0][1])["seq"] == 6  # windows 1-5 were dropped


def test_concurrent_predictions_are_all_counted():
    predictor, telemetry = wired(window_count=1000, window_s=0)
    predictor.load(loaded())
    x = onnx_model(0).matrix

    def work() -> None:
        for i in range(250):
            predictor.predict_features(x[i % 8 : i % 8 + 1])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    telemetry.close()
    (w,) = drained(telemetry)
    assert w["stats"]["count"] == 1000 and sum(w["stats"]["class_counts"]) == 1000


# --- sampling -----------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [2.0, 50.0])
def test_sampling_keeps_to_its_budget_and_spreads_over_the_predictions(rate):
    clock = Clock(0.0)
    sampler = Sampler(SamplingBudget(per_hour=120), rng=random.Random(3), clock=clock)
    taken = []
    n = int(2 * 3600 * rate)  # two hours of traffic
    for i in range(n):
        clock.now = i / rate
        if i % int(rate) == 0:
            sampler.observe()  # the agent's tick
        if sampler.want():
            sampler.spend(300)
            taken.append(i)
    assert 200 <= len(taken) <= 240 + 2  # 120 an hour, plus at most a minute of burst
    per_hour = [
        sum(1 for i in taken if h * 3600 * rate <= i < (h + 1) * 3600 * rate) for h in (0, 1)
    ]
    assert all(c <= 120 + 2 for c in per_hour), per_hour
    if rate > 2:  # a random choice, not the first prediction after each token
        phase = np.bincount([i % int(rate) for i in taken], minlength=int(rate))
        assert phase.max() <= 4 * len(taken) / rate, phase


def test_a_byte_budget_limits_the_bytes():
    clock = Clock(0.0)
    sampler = Sampler(SamplingBudget(bytes_per_hour=100_000), rng=random.Random(1), clock=clock)
    sizes = []
    for i in range(3600 * 10):  # one hour at 10 predictions a second
        clock.now = i / 10
        if i % 10 == 0:
            sampler.observe()
        if sampler.want():
            size = 400 + (i % 7) * 100
            sampler.spend(size)
            sizes.append(size)
    assert 80_000 <= sum(sizes) <= 100_000 + 100_000 / 60 + 1000


def test_samples_carry_the_prediction_and_labels_can_follow():
    clock = Clock()
    predictor, telemetry = wired(clock, stats_enabled=False, samples_per_hour=3600)
    model = loaded()
    predictor.load(model)
    rows = onnx_model(0).rows
    results = predictor.predict_rows(rows[:3])  # p starts at 1 with one token: row 0 is taken
    assert results[0]["sample_id"] == f"{DEV}/7-boot/1" and "sample_id" not in results[1]
    clock.now += 30  # half a minute: 30 tokens
    telemetry.tick()
    results = predictor.predict_features(onnx_model(0).matrix[:2])
    samples = drained(telemetry, "samples")
    assert [s["seq"] for s in samples] == [1, 2, 3]
    first = samples[0]
    assert first["input"] == rows[0]
    assert np.array_equal(np.array(first["features"], np.float32), onnx_model(0).matrix[0])
    np.testing.assert_allclose(first["outputs"], onnx_model(0).probabilities[0], rtol=1e-7)
    assert first["predicted"] == LABELS[int(onnx_model(0).probabilities[0].argmax())]
    assert first["model"]["sha256"] == model.manifest["artifact"]["sha256"]
    assert samples[1]["input"] is None  # predict_features has no raw rows
    assert [r["sample_id"] for r in results] == [f"{DEV}/7-boot/2", f"{DEV}/7-boot/3"]

    predictor.send_label(results[0]["sample_id"], "yes")
    telemetry.label(results[1]["sample_id"], "no")
    labels = drained(telemetry, "labels")
    assert [(x["sample_id"], x["label"]) for x in labels] == [
        (f"{DEV}/7-boot/2", "yes"),
        (f"{DEV}/7-boot/3", "no"),
    ]
    for bad_id, bad_label in [("other-dev/b/1", "yes"), (results[0]["sample_id"], "")]:
        with pytest.raises(PredictionError, match="cannot send this label"):
            predictor.send_label(bad_id, bad_label)
    with pytest.raises(PredictionError, match="running agent"):
        Predictor().send_label("x", "y")


def test_the_manifest_sets_the_sampling_budget():
    predictor, telemetry = wired(stats_enabled=False, samples_per_hour=0)
    predictor.load(loaded(sampling={"per_hour": 3600}))
    assert "sample_id" in predictor.predict_rows(onnx_model(0).rows[:1])[0]
    predictor.load(loaded(1, seq=2, sampling={"per_hour": "lots"}))  # bad: the agent's budget
    assert "sample_id" not in predictor.predict_rows(onnx_model(1).rows[:1])[0]
    assert telemetry.counters.get("sampling_config_bad") == 1
    assert budget_from(10, 500, {"per_hour": 0}) == SamplingBudget(0, 500)
    with pytest.raises(ValueError, match=r"serving\.sampling"):
        budget_from(10, 0, {"rate": 1})


def test_unsendable_raw_inputs_are_left_out():
    clock = Clock()
    predictor, telemetry = wired(clock, stats_enabled=False, samples_per_hour=3600)
    model = loaded()
    predictor.load(model)
    row = {**onnx_model(0).rows[0], "when": object(), "nan": float("nan")}
    predictor.predict_rows([row])
    (sample,) = drained(telemetry, "samples")
    assert sample["input"] is None
    assert telemetry.counters.get("samples_input_unsendable") == 1
    clock.now += 10  # tokens for ten more
    predictor.predict_features([[np.nan, 0.0, 0.0, 0.0]])  # NaN scores: never sampled
    predictor.predict_rows([{**onnx_model(0).rows[1], "site": "north", "gap": float("nan")}])
    (sample,) = drained(telemetry, "samples")
    assert sample["input"]["site"] == "north" and sample["input"]["gap"] is None
    assert telemetry.counters.get("samples_non_finite_skipped") == 1


# --- the outbox ---------------------------------------------------------------------------


def test_the_outbox_keeps_order_bounds_and_counts_across_reopening(tmp_path):
    box = Outbox(tmp_path / "o", max_messages=4, max_bytes=1 << 20)
    for i in range(6):
        box.append("t/a", b"m%d" % i)
    assert box.dropped == 2 and len(box) == 4
    again = Outbox(tmp_path / "o", max_messages=4, max_bytes=1 << 20)
    assert again.dropped == 2 and len(again) == 4
    got = []
    while (item := again.oldest()) is not None:
        got.append(item[2])
        again.remove(item[0])
    assert got == [b"m2", b"m3", b"m4", b"m5"]
    again.append("t/a", b"after")
    assert next(iter(Path(tmp_path / "o").glob("*.msg"))).name == "00000000000000000007.msg"
    assert json.loads((tmp_path / "o" / "dropped.json").read_bytes()) == {"format": 1, "dropped": 2}


def test_the_outbox_keeps_sent_windows_until_acked_and_queues_overdue_ones_in_order(tmp_path):
    box = Outbox(tmp_path / "o", max_messages=100, max_bytes=1 << 20)
    msgs = [(f"edgeops/lab/devices/{DEV}/telemetry", {"boot": "b", "seq": s}) for s in (1, 2, 3)]
    for topic, m in msgs:
        box.append(topic, json.dumps(m).encode())
    keys = {}
    for deadline in (10.0, 11.0, 12.0):  # sent and PUBACKed, one after the other
        number, topic, payload = box.oldest()
        keys[number] = ack_key(topic, payload)
        box.await_ack(number, keys[number], deadline)
    assert box.oldest() is None and box.waiting == 0 and box.unacknowledged == 3
    assert sorted(keys.values()) == [
        ("telemetry", "b", 1),
        ("telemetry", "b", 2),
        ("telemetry", "b", 3),
    ]
    assert box.acknowledge(("telemetry", "b", 2)) and not box.acknowledge(("telemetry", "b", 2))
    assert box.expire(10.5) == [(1, 1)]  # seq 1 is overdue: queued again
    box.append("edgeops/lab/devices/x/labels", b"label")  # newer: goes after seq 1
    assert [box.expire(12.0), box.oldest()[0]] == [[(3, 1)], 1]
    order = []
    while (item := box.oldest()) is not None:
        order.append(item[0])
        box.remove(item[0])
    assert order == [1, 3, 4]  # the overdue ones first, in their order, then the new one
    assert len(box) == 0 and box.unacknowledged == 0
    again = Outbox(tmp_path / "o", max_messages=100, max_bytes=1 << 20)
    assert len(again) == 0
    box.append(*msgs[0][:1], b"{}")  # no boot/seq: nothing to wait for
    assert ack_key(*msgs[0][:1], b"{}") is None
    assert ack_key("edgeops/lab/devices/x/labels", b'{"boot": "b", "seq": 1}') is None
    restarted = Outbox(tmp_path / "o", max_messages=100, max_bytes=1 << 20)
    assert restarted.waiting == 1  # after a restart everything left is sent again


def test_the_outbox_bounds_bytes_and_spares_the_message_in_flight(tmp_path):
    box = Outbox(tmp_path / "o", max_messages=100, max_bytes=100)
    assert box.append("t", b"x" * 200) == 1  # alone over the limit: dropped, counted
    box.append("t", b"a" * 30)
    first = box.oldest()[0]
    box.in_flight = first
    box.append("t", b"b" * 30)
    box.append("t", b"c" * 30)  # over 100 bytes: "b" goes, not "a" (handed to the broker)
    payloads = [box.oldest()[2]]
    box.remove(first)
    while (item := box.oldest()) is not None:
        payloads.append(item[2])
        box.remove(item[0])
    assert payloads == [b"a" * 30, b"c" * 30] and box.dropped == 2


def test_damaged_and_stray_outbox_files_are_dropped_and_counted(tmp_path):
    folder = tmp_path / "o"
    box = Outbox(folder, max_messages=10, max_bytes=1 << 20)
    box.append("t", b"one")
    box.append("t", b"two")
    (folder / "00000000000000000001.msg").write_bytes(b"garbage")
    (folder / ".00000000000000000009.msg.abc.tmp").write_bytes(b"half written")
    (folder / "dropped.json").write_bytes(b"{not json")
    again = Outbox(folder, max_messages=10, max_bytes=1 << 20)
    assert not list(folder.glob(".*.tmp"))
    assert again.oldest()[1:] == ("t", b"two") and again.dropped == 1
    for junk in (b"[1]", b'{"format": 1, "dropped": true}', b'{"format": 9, "dropped": 4}'):
        (folder / "dropped.json").write_bytes(junk)
        assert Outbox(folder, max_messages=10, max_bytes=1 << 20).dropped == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"telemetry_window_s": 0.5}, "telemetry_window_s must be 0"),
        ({"telemetry_window_s": 0, "telemetry_window_count": 0}, "cannot both be 0"),
        ({"telemetry_window_count": -1}, "telemetry_window_count must be"),
        ({"outbox_max_messages": 5}, "outbox_max_messages must be 10"),
        ({"outbox_max_bytes": 1000}, "outbox_max_bytes must be >= 1048576"),
        ({"samples_per_hour": -1}, "samples_per_hour must be"),
        ({"sample_bytes_per_hour": 1e12}, "sample_bytes_per_hour must be"),
        ({"telemetry": "yes"}, "telemetry must be bool"),
        ({"telemetry_window_count": 1.5}, "telemetry_window_count must be int"),
    ],
)
def test_monitoring_config_is_checked(tmp_path, change, message):
    from edgeops_agent.config import AgentConfig
    from edgeops_agent.errors import ConfigError

    base = {"device": "pi", "fleet": "lab", "state_dir": str(tmp_path), "runtimes": []}
    base["public_keys"] = ["A" * 43 + "="]
    config = AgentConfig.from_dict(base)
    assert (config.telemetry, config.telemetry_window_s, config.telemetry_window_count) == (
        True,
        60.0,
        250,
    )
    assert (config.samples_per_hour, config.sample_bytes_per_hour) == (0, 0)
    assert AgentConfig.from_dict({**base, "telemetry": False, "telemetry_window_s": 0,
                                  "telemetry_window_count": 0}).telemetry is False  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        AgentConfig.from_dict({**base, **change})


@pytest.mark.parametrize("name", ["telemetry", "outbox", "sampling"])
def test_docstring_examples_run(name):
    module = importlib.import_module(f"edgeops_agent.{name}")
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


# --- against Mosquitto --------------------------------------------------------------------


class Collector:
    """What the server's collector does: a persistent session (clean_session=False) with
    QoS 1 subscriptions, so the broker queues what devices send while it is away, and an
    ``ack`` message back to the device for every window and sample it got (``acks=False``:
    none, like a collector of before the acks)."""

    def __init__(self, broker: Any, fleet: str, acks: bool = True) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.fleet = fleet
        self.acks = acks
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"collector-{fleet}"[:60],
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "collector did not subscribe"

    def _on_connect(self, client: Any, *args: Any) -> None:
        kinds = ("telemetry", "samples", "labels", "state")
        client.subscribe([(f"edgeops/{self.fleet}/devices/+/{k}", 1) for k in kinds])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))
        _, device, kind = parse_device_topic(msg.topic)
        if self.acks and kind in ACK_KINDS:
            m = json.loads(msg.payload)
            ack = ack_message(fleet=self.fleet, device=device, **{kind: [[m["boot"], m["seq"]]]})
            client.publish(device_topic(self.fleet, device, "ack"), ack, qos=1)

    def of(self, kind: str, parse: Any) -> list[dict]:
        topic = device_topic(self.fleet, DEV, kind)
        with self._lock:
            return [parse(p) for t, p in self.messages if t == topic]

    def windows(self) -> list[dict]:
        return self.of("telemetry", parse_telemetry)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# Mosquitto started as root drops to the "mosquitto" user, which cannot write the test's
# folder, so it silently keeps no persistence ("Error: Permission denied" in its log) and a
# restart forgets the collector's session. "user root" keeps it root (and does nothing when
# it is not started as root), so the session and its queued messages survive a restart.
_BROKER_CONFIG = "user root"


@pytest.fixture
def broker(tmp_path):
    from brokers import start_broker

    b = start_broker(tmp_path / "broker", extra_config=_BROKER_CONFIG)
    if b.kind != "mosquitto":
        b.stop()
        pytest.skip("these tests need Mosquitto's persistent sessions across a restart")
    yield b
    b.stop()


def restart_broker(broker: Any) -> None:
    """Start the stopped broker again on its port, with its persistence."""
    from brokers import start_broker

    broker.stop()
    broker.proc = start_broker(broker.folder, port=broker.port, extra_config=_BROKER_CONFIG).proc


@pytest.fixture
def collector(broker, topic_prefix):
    c = Collector(broker, topic_prefix)
    yield c
    c.close()


@pytest.fixture
def start(broker, server, keys, tmp_path):
    started: list[Agent] = []

    def _start(state: str = "state", connect: bool = True, **over: Any) -> Agent:
        over.setdefault("reconnect_min_s", 0.2)
        over.setdefault("reconnect_max_s", 1.0)
        config = agent_config(tmp_path / state, broker, server.fleet, keys[1], **over)
        agent = Agent(config)
        agent.start()
        started.append(agent)
        if connect:
            wait_until(lambda: agent.connected, what="agent connected")
        return agent

    yield _start
    for agent in started:
        agent.stop()


def _deploy(server: Server, agent: Agent, **serving: Any) -> dict:
    manifest = server.deploy(onnx_model(0), DEV, 5, serving={"baseline": baseline(), **serving})
    server.wait_event(DEV, "activated", 5)
    wait_until(lambda: agent.predictor.model is not None, what="model serving")
    return manifest


def _predict(agent: Agent, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    out = [agent.predictor.predict_features(row)[0]["scores"] for row in x]
    return x, np.array(out, dtype=np.float32)


def _seqs(windows: list[dict], boot: str) -> list[int]:
    return [w["seq"] for w in windows if w["boot"] == boot]


def test_windows_reach_the_broker_in_order_with_their_counts(server, collector, start):
    agent = start(telemetry_window_count=10)
    _deploy(server, agent)
    x, out = _predict(agent, 30)
    windows = wait_until(lambda: len(collector.windows()) >= 3 and collector.windows())
    assert _seqs(windows, agent.boot) == [1, 2, 3]
    model = agent.predictor.model
    for k, w in enumerate(windows):
        same_counts(
            w["stats"], expected_window(model, x[10 * k : 10 * k + 10], out[10 * k : 10 * k + 10])
        )
        assert w["model"]["sha256"] == model.manifest["artifact"]["sha256"]
    wait_until(lambda: len(agent.outbox) == 0, what="outbox emptied")
    assert agent.stats["telemetry_windows"] == 3
    state = wait_until(lambda: collector.of("state", parse_state))[-1]
    assert state["outbox_dropped"] == 0


def test_windows_wait_in_the_outbox_while_the_broker_is_down(broker, server, collector, start):
    agent = start(telemetry_window_count=4)
    _deploy(server, agent)
    _predict(agent, 8)
    wait_until(lambda: len(collector.windows()) == 2, what="two windows before the outage")
    server.close()
    broker.stop()
    wait_until(lambda: not agent.connected, what="agent disconnected")
    _predict(agent, 40, seed=1)
    wait_until(lambda: len(agent.outbox) == 10, what="ten windows in the outbox")
    assert len(list((agent.config.state_dir / "outbox").glob("*.msg"))) == 10
    restart_broker(broker)
    windows = wait_until(
        lambda: len(set(_seqs(collector.windows(), agent.boot))) == 12 and collector.windows(),
        timeout=30,
        what="every window after the broker came back",
    )
    seqs = _seqs(windows, agent.boot)
    assert sorted(set(seqs)) == list(range(1, 13))  # none lost
    first_seen = sorted(set(seqs), key=seqs.index)
    assert first_seen == list(range(1, 13))  # in order (a redelivery may repeat one)
    assert len(seqs) <= 12 + 1
    wait_until(lambda: len(agent.outbox) == 0, what="outbox emptied")
    assert agent.outbox.dropped == 0


def test_a_full_outbox_drops_the_oldest_and_the_state_says_so(broker, server, collector, start):
    agent = start(telemetry_window_count=2, outbox_max_messages=10)
    _deploy(server, agent)
    server.close()
    broker.stop()
    wait_until(lambda: not agent.connected, what="agent disconnected")
    _predict(agent, 30)  # 15 windows for 10 places
    wait_until(lambda: agent.outbox.dropped == 5, what="five windows dropped")
    dropped_file = agent.config.state_dir / "outbox" / "dropped.json"
    # the counter goes up just before dropped.json is written
    wait_until(
        lambda: dropped_file.exists() and json.loads(dropped_file.read_bytes())["dropped"] == 5,
        what="dropped.json says five",
    )
    restart_broker(broker)
    windows = wait_until(
        lambda: len(set(_seqs(collector.windows(), agent.boot))) == 10 and collector.windows(),
        timeout=30,
    )
    assert sorted(set(_seqs(windows, agent.boot))) == list(range(6, 16))  # the oldest went
    state = wait_until(
        lambda: next(
            (s for s in collector.of("state", parse_state) if s.get("outbox_dropped") == 5), None
        ),
        what="a state reporting the drops",
    )
    assert state["boot"] == agent.boot


def test_a_restarted_agent_sends_what_its_outbox_kept(broker, server, collector, start):
    first = start("state", telemetry_window_count=3)
    _deploy(server, first)
    server.close()
    broker.stop()
    wait_until(lambda: not first.connected, what="agent disconnected")
    _predict(first, 10)  # 3 windows closed, 1 prediction still in the open window
    wait_until(lambda: len(first.outbox) == 3)
    first.stop()  # the open window goes to the outbox too; nothing can be sent
    assert len(list((first.config.state_dir / "outbox").glob("*.msg"))) == 4
    restart_broker(broker)
    again = start("state", telemetry_window_count=3)
    assert again.boot != first.boot
    windows = wait_until(
        lambda: len(set(_seqs(collector.windows(), first.boot))) == 4 and collector.windows(),
        timeout=30,
    )
    assert sorted(set(_seqs(windows, first.boot))) == [1, 2, 3, 4]
    assert [w["stats"]["count"] for w in windows if w["boot"] == first.boot][:4] == [3, 3, 3, 1]
    _predict(again, 3)
    wait_until(lambda: _seqs(collector.windows(), again.boot) == [1], what="new boot's window")


def test_an_unreachable_broker_keeps_everything_on_disk(server, keys, tmp_path, broker):
    from brokers import free_port

    config = agent_config(
        tmp_path / "s",
        SimpleNamespace(url=f"mqtt://127.0.0.1:{free_port()}"),
        server.fleet,
        keys[1],
        telemetry_window_count=1,
        samples_per_hour=3600,
    )
    agent = Agent(config)
    agent.start()
    try:
        agent.predictor.load(loaded())
        result = agent.predictor.predict_rows(onnx_model(0).rows[:1])[0]
        agent.send_label(result["sample_id"], "yes")
        wait_until(lambda: len(agent.outbox) == 3, what="window, sample and label on disk")
    finally:
        agent.stop()
    names = sorted(p.name for p in (tmp_path / "s" / "outbox").glob("*.msg"))
    assert len(names) == 3
    kinds = [
        (tmp_path / "s" / "outbox" / n).read_bytes().split(b"\n", 1)[0].rsplit(b"/", 1)[1]
        for n in names
    ]
    assert sorted(kinds) == [b"labels", b"samples", b"telemetry"]


def test_samples_and_labels_reach_the_broker(server, collector, start):
    agent = start(telemetry=False, samples_per_hour=3600)
    _deploy(server, agent)
    rows = onnx_model(0).rows
    result = agent.predictor.predict_rows(rows[:1])[0]
    sample_id = result["sample_id"]
    assert sample_id == f"{DEV}/{agent.boot}/1"
    agent.send_label(sample_id, "no")
    (sample,) = wait_until(lambda: collector.of("samples", parse_sample))
    assert sample["input"] == rows[0] and sample["predicted"] == result["label"]
    (label,) = wait_until(lambda: collector.of("labels", parse_label))
    assert (label["sample_id"], label["label"]) == (sample_id, "no")
    assert collector.windows() == []  # statistics are off


@pytest.mark.parametrize("ack_timeout", [0, 1.0], ids=["puback-only", "collector-acks"])
def test_windows_the_broker_took_with_nobody_subscribed_are_sent_again_until_acked(
    broker, server, start, topic_prefix, ack_timeout
):
    """What a Mosquitto restart does to a shared subscription, made on purpose: the broker
    PUBACKs windows while no collector is subscribed, and drops them. Waiting for the
    collector's ack, the agent sends them again once one is there; with the PUBACK alone
    (ack timeout 0) they are gone."""
    agent = start(telemetry_window_count=5, outbox_ack_timeout_s=ack_timeout)
    _deploy(server, agent)
    _predict(agent, 15)
    wait_until(
        lambda: agent._sender.idle and agent.stats.get("telemetry_windows") == 3, what="3 sent"
    )
    assert agent.outbox.unacknowledged == (3 if ack_timeout else 0)  # kept on disk, or gone
    collector = Collector(broker, topic_prefix)
    try:
        if ack_timeout:
            wait_until(lambda: agent._sender.settled, timeout=30, what="all three acked")
            assert _seqs(collector.windows(), agent.boot)[:3] == [1, 2, 3]
            assert agent._sender.resent >= 3 and agent._sender.acknowledged == 3
            assert len(list((agent.config.state_dir / "outbox").glob("*.msg"))) == 0
        else:
            _predict(agent, 5, seed=1)  # a fourth window proves the collector listens
            wait_until(lambda: collector.windows(), what="the fourth window")
            assert _seqs(collector.windows(), agent.boot) == [4]  # 1-3 were lost
            assert agent._sender.resent == 0
    finally:
        collector.close()
    assert agent.outbox.dropped == 0
