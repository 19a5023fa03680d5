"""The collector on a real Mosquitto: fake devices publish with paho; windows are stored once,
two collectors in a shared subscription split the stream, a collector killed mid-stream loses
nothing when restarted, labels arrive by MQTT and by the CLI."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from typer.testing import CliRunner

from edgeops.cli import app
from edgeops.fleet.store import FleetStore
from edgeops.monitoring.collector import Collector, CollectorOptions
from edgeops.monitoring.ingest import Ingestor
from edgeops.monitoring.store import MonitoringStore
from edgeops.mqtt import Message, MqttClient
from edgeops_protocol.messages import parse_ack
from edgeops_protocol.stats import merge_windows
from telemetry_kit import label, make_baseline, model_of, register_model, sample, state, window
from telemetry_kit import telemetry as telemetry_msg

runner = CliRunner()


def _publish(url: str, items: list[tuple[str, bytes]], retain: bool = False) -> None:
    with MqttClient(url) as c:
        c.publish_all([(t, p, retain) for t, p in items])


def _wait(cond: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or cond}")


@contextmanager
def _running(collector: Collector) -> Iterator[Collector]:
    collector.start()
    t = threading.Thread(target=collector.run, daemon=True)
    t.start()
    try:
        yield collector
    finally:
        collector.stop()
        t.join(30)
        collector.close()


def _collector(ws: Any, broker: Any, fleet: str, cid: str, **opts: Any) -> Collector:
    options = CollectorOptions(client_id=cid, batch_size=50, linger=0.02, **opts)
    return Collector(Ingestor(ws.db, fleet), broker.url, options)


@pytest.fixture
def fleet(ws, broker, topic_prefix):
    """A model with a baseline and 10 devices whose retained states are on the broker."""
    mv = register_model(ws)
    devices = [f"d{i}" for i in range(10)]
    _publish(broker.url, [state(topic_prefix, d) for d in devices], retain=True)
    return {
        "name": topic_prefix,
        "model": model_of(mv),
        "base": make_baseline(),
        "devices": devices,
    }


def _windows(fl: dict, per_device: int, n: int = 20) -> list[dict]:
    return [
        window(fl["name"], d, seq, fl["model"], fl["base"], n=n)
        for seq in range(1, per_device + 1)
        for d in fl["devices"]
    ]


def _known(ws: Any, fl: dict) -> bool:
    return len(FleetStore(ws.db, fl["name"]).devices()) == len(fl["devices"])


def test_windows_published_twice_are_stored_once(ws, broker, fleet):
    store = MonitoringStore(ws.db, fleet["name"])
    msgs = _windows(fleet, per_device=5)
    with _running(_collector(ws, broker, fleet["name"], "c-once")) as col:
        _wait(lambda: _known(ws, fleet), what="the devices' states")
        _publish(broker.url, [telemetry_msg(m) for m in msgs])
        _publish(broker.url, [telemetry_msg(m) for m in msgs])  # redelivered / replayed
        _wait(lambda: store.counters().get("duplicate") == len(msgs), what="the duplicates")
    assert store.window_count() == len(msgs) == 50
    assert col.accepted["telemetry"] == 50 and col.rejected == {"duplicate": 50}
    assert col.accepted["state"] >= 10
    assert store.merged("har@1", "tflite-int8") == merge_windows([m["stats"] for m in msgs])
    assert store.merged("har@1", "tflite-int8", device="d3")["count"] == 5 * 20


def test_each_committed_window_and_sample_is_acknowledged_to_its_own_device(ws, broker, fleet):
    """The end-to-end acks agents wait for: after the commit, each device gets the
    (boot, seq) of its windows and samples (duplicates too: they are stored), nobody gets
    another device's, and neither a message that could not be parsed nor one from a device
    the registry does not know (yet) is acknowledged."""
    store = MonitoringStore(ws.db, fleet["name"])
    name, model = fleet["name"], fleet["model"]
    msgs = _windows(fleet, per_device=3)
    acks: dict[str, list[dict]] = {}
    listener = MqttClient(broker.url)
    listener.subscribe(f"edgeops/{name}/devices/+/ack")
    with listener, _running(_collector(ws, broker, name, "c-acks")) as col:
        listener.wait_subscribed()
        _wait(lambda: _known(ws, fleet), what="the devices' states")
        _publish(broker.url, [telemetry_msg(m) for m in msgs])
        _publish(broker.url, [sample(name, "d0", s, model) for s in (1, 2)])
        _publish(broker.url, [telemetry_msg(msgs[0])])  # again: a duplicate, acknowledged
        _publish(broker.url, [(telemetry_msg(msgs[1])[0], b"{not json")])  # never acknowledged
        stranger = window(name, "d99", 1, model, fleet["base"])  # no state yet: sent again later
        _publish(broker.url, [telemetry_msg(stranger)])
        _wait(lambda: sum(store.counters().values()) == 3, what="duplicate, malformed, unknown")
        for m in listener.drain(3.0):
            acks.setdefault(m.topic.split("/")[3], []).append(parse_ack(m.payload))
    assert store.window_count() == 30
    assert sorted(acks) == fleet["devices"]
    for device, got in acks.items():
        assert {a["device"] for a in got} == {device}
        pairs = [tuple(p) for a in got for p in a["telemetry"]]
        first = msgs[0]["device"]
        assert sorted(pairs) == [("b0", 1)] * (2 if device == first else 1) + [
            ("b0", 2),
            ("b0", 3),
        ]
        assert [tuple(p) for a in got for p in a["samples"]] == (
            [("b0", 1), ("b0", 2)] if device == "d0" else []
        )
    assert col.acks_sent == sum(len(v) for v in acks.values())


def test_bad_input_over_mqtt_is_counted_and_the_collector_keeps_going(ws, broker, fleet):
    store = MonitoringStore(ws.db, fleet["name"])
    name, model, base = fleet["name"], fleet["model"], fleet["base"]
    good = [window(name, "d0", s, model, base) for s in (1, 2)]
    bad = window(name, "d0", 3, model, base)
    bad["stats"]["features"][0] = bad["stats"]["features"][0][:-1]
    topic = telemetry_msg(good[0])[0]
    with _running(_collector(ws, broker, name, "c-bad")):
        _wait(lambda: _known(ws, fleet), what="the devices' states")
        stranger = window(name, "nobody", 1, model, base)
        _publish(broker.url, [
            telemetry_msg(good[0]), (topic, b"\x00garbage"), telemetry_msg(bad),
            (topic, b"{" + b" " * 300_000 + b"}"), telemetry_msg(stranger), telemetry_msg(good[1]),
        ])  # fmt: skip
        _wait(lambda: store.window_count() == 2, what="the good windows")
        _wait(lambda: sum(store.counters().values()) == 4, what="the counters")
    assert store.counters() == {
        "malformed": 1, "wrong_bins": 1, "oversized": 1, "unknown_device": 1}  # fmt: skip


def test_two_collectors_split_the_stream_without_loss_or_duplicates(ws, broker, fleet):
    store = MonitoringStore(ws.db, fleet["name"])
    msgs = _windows(fleet, per_device=30, n=5)
    a = _collector(ws, broker, fleet["name"], "c-a", group="split")
    b = _collector(ws, broker, fleet["name"], "c-b", group="split")
    assert all(t.startswith("$share/split/") for t in a.topics()[1:])
    with _running(a), _running(b):
        _wait(lambda: _known(ws, fleet), what="the devices' states")
        _publish(broker.url, [telemetry_msg(m) for m in msgs])
        _wait(lambda: store.window_count() == len(msgs), what="every window")
        _wait(lambda: a.accepted["telemetry"] + b.accepted["telemetry"] == len(msgs))
    assert a.accepted["telemetry"] > 0 and b.accepted["telemetry"] > 0
    assert a.accepted["telemetry"] + b.accepted["telemetry"] == len(msgs) == 300
    assert "duplicate" not in store.counters()
    seqs = {(w.device_id, w.seq) for w in store.windows(limit=None)}
    assert len(seqs) == 300


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_collector_killed_mid_stream_loses_nothing_once_restarted(ws, broker, fleet, monkeypatch):
    store = MonitoringStore(ws.db, fleet["name"])
    msgs = _windows(fleet, per_device=150, n=5)
    env = {**os.environ, "EDGEOPS_MQTT_URL": broker.url, "EDGEOPS_FLEET": fleet["name"]}
    cmd = [sys.executable, "-m", "edgeops", "-w", str(ws.settings.home), "collector",
           "--id", "c-kill", "--batch-size", "20", "--duration", "120"]  # fmt: skip
    log = open(ws.settings.home / "collector.log", "ab")  # noqa: SIM115 - closed below
    first = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    try:
        _wait(lambda: _known(ws, fleet), what="the devices' states")
        time.sleep(1.0)  # subscribed (the CLI syncs retained states first)
        sender = threading.Thread(
            target=_publish, args=(broker.url, [telemetry_msg(m) for m in msgs])
        )
        sender.start()
        _wait(lambda: store.window_count() >= 200, what="some windows stored")
        first.kill()  # SIGKILL: no chance to acknowledge or flush anything
        first.wait(10)
        sender.join(60)
        at_kill = store.window_count()
        assert at_kill < len(msgs), "the collector finished before it could be killed"
        second = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
        try:
            _wait(lambda: store.window_count() == len(msgs), timeout=120, what="every window")
            time.sleep(1.0)  # nothing more arrives
        finally:
            second.terminate()
            second.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    assert store.window_count() == len(msgs) == 1500
    assert len({(w.device_id, w.seq) for w in store.windows(limit=None)}) == 1500
    assert set(store.counters()) <= {"duplicate"}  # only redelivered copies, if any


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_labels_by_mqtt_and_by_the_cli_give_on_device_accuracy(ws, broker, fleet, monkeypatch):
    monkeypatch.setenv("EDGEOPS_FLEET", fleet["name"])
    name, model = fleet["name"], fleet["model"]
    store = MonitoringStore(ws.db, name)
    preds = {1: "walk", 2: "run", 3: "idle"}
    with _running(_collector(ws, broker, name, "c-labels")):
        _wait(lambda: _known(ws, fleet), what="the devices' states")
        _publish(broker.url, [sample(name, "d1", i, model, p) for i, p in preds.items()])
        _wait(lambda: len(store.samples()) == 3, what="the samples")
        _publish(
            broker.url, [label(name, "d1", "d1/b0/1", "walk"), label(name, "d1", "d1/b0/2", "walk")]
        )
        _wait(lambda: len(store.samples(labelled=True)) == 2, what="the MQTT labels")
    home = str(ws.settings.home)
    out = runner.invoke(app, ["-w", home, "labels", "add", "d1/b0/3", "idle", "--json"])
    assert out.exit_code == 0, out.output
    added = {"sample_id": "d1/b0/3", "label": "idle", "predicted": "idle", "status": "added"}
    assert json.loads(out.output) == added
    out = runner.invoke(app, ["-w", home, "labels", "accuracy", "--model", "har", "--json"])
    assert json.loads(out.output) == {"labelled": 3, "correct": 2, "accuracy": 2 / 3}
    out = runner.invoke(app, ["-w", home, "labels", "add", "d1/b0/99", "idle"])
    assert out.exit_code == 3 and out.output.startswith("error: no sample")
    out = runner.invoke(app, ["-w", home, "labels", "list", "--json"])
    assert [r["label"] for r in json.loads(out.output)] == ["idle", "walk", "walk"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_mqtt_311_uses_a_plain_subscription(ws, broker, fleet):
    store = MonitoringStore(ws.db, fleet["name"])
    col = _collector(ws, broker, fleet["name"], "c-311", protocol="3.1.1")
    assert not any(t.startswith("$share") for t in col.topics())
    msgs = _windows(fleet, per_device=2)
    with _running(col):
        _wait(lambda: _known(ws, fleet), what="the devices' states")
        _publish(broker.url, [telemetry_msg(m) for m in msgs])
        _wait(lambda: store.window_count() == len(msgs), what="every window")


def test_acks_only_go_out_on_the_connection_a_message_came_on():
    c = MqttClient("mqtt://127.0.0.1:1", protocol="5", manual_ack=True, session_expiry=60)
    msg = Message("t", b"", False, mid=7, qos=1, conn=1)
    c.connections = 1
    assert c.ack(msg) is False  # not connected: the broker will redeliver it
    c._connected.set()
    sent = []
    c.client.ack = lambda mid, qos: sent.append(mid)
    assert c.ack(msg) is True and sent == [7]
    c.connections = 2  # reconnected: mid 7 may now name another message
    assert c.ack(msg) is False and sent == [7]
    assert MqttClient("mqtt://127.0.0.1:1").ack(msg) is False  # automatic acks


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_message_that_breaks_ingest_is_dropped_alone_and_counted(ws, fleet):
    class Buggy(Ingestor):
        def store(self, batch):
            if any(m["seq"] == 2 for _, m in batch.parsed["telemetry"]):
                raise RuntimeError("a bug")
            return super().store(batch)

    name = fleet["name"]
    FleetStore(ws.db, name).apply_state(json.loads(state(name, "d0")[1]))
    msgs = [telemetry_msg(window(name, "d0", s, fleet["model"], fleet["base"])) for s in (1, 2)]
    col = Collector(Buggy(ws.db, name), "mqtt://127.0.0.1:1", CollectorOptions(client_id="c"))
    batch = [Message(t, p, False) for t, p in msgs]
    # no broker needed: without a connection there is nothing to acknowledge
    assert col._write(batch, col.ingestor.prepare(msgs), None)
    assert col.accepted == {"telemetry": 1} and col.rejected == {"internal_error": 1}
    assert MonitoringStore(ws.db, name).counters() == {"internal_error": 1}
    assert [w.seq for w in MonitoringStore(ws.db, name).windows()] == [1]


def test_the_message_queue_is_bounded_in_bytes_as_well_as_in_messages():
    from edgeops.mqtt import MessageQueue

    q = MessageQueue(maxsize=100, max_bytes=300_000)
    big = [Message("t", bytes([i]) * 100_000, False) for i in range(40)]
    producer = threading.Thread(target=lambda: [q.put(m) for m in big])
    producer.start()
    got = []
    while len(got) < len(big):
        got.append(q.get(timeout=10))
        time.sleep(0.002)  # a consumer slower than the producer: the producer waits
    producer.join(10)
    assert [m.payload[0] for m in got] == list(range(40))  # nothing lost, in order
    assert q.peak_bytes == 300_000 and q.bytes == 0
    q.put(Message("t", b"x" * 200_000, False))
    with pytest.raises(queue.Full):
        q.put(Message("t", b"y" * 200_000, False), block=False)
    with pytest.raises(queue.Full):
        q.put(Message("t", b"y" * 200_000, False), timeout=0.05)
    q.get()
    q.put(Message("t", b"z" * 500_000, False))  # over the bound alone: goes into an empty queue
    assert q.bytes == 500_000 and q.qsize() == 1
