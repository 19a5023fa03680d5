"""Floods and junk: a device that floods telemetry, and payloads fuzzed by hypothesis.

* One device publishes 20,000 windows as fast as it can while five others publish theirs
  at an ordinary pace; the others' windows must all be stored, within a bounded time. The
  collector runs as its own process (``edgeops collector``) so that its memory can be
  measured: its peak RSS through the flood, and then through a flood of oversized and
  malformed payloads, must stay under a fixed bound.
* Random bytes, JSON with wrong types, huge numbers, deep nesting, wrong bins, negative
  counts and oversized payloads, sent through Mosquitto to a real agent's topics (its
  desired state and the artifact chunks of a download in progress) and to the collector's
  topics (telemetry, samples, labels, events, states): neither crashes, the agent keeps
  serving and stays online, the collector keeps storing the valid messages sent between
  the junk and counts every junk message it refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeops.dashboard.sample_data import telemetry_doc
from edgeops.fleet.store import FleetStore
from edgeops.monitoring.collector import Collector, CollectorOptions
from edgeops.monitoring.ingest import Ingestor
from edgeops.monitoring.store import MonitoringStore
from edgeops.monitoring.validate import MAX_BYTES
from edgeops.mqtt import MqttClient
from edgeops_agent.agent import Agent
from edgeops_protocol.manifest import generate_keypair
from edgeops_protocol.messages import event_message
from edgeops_protocol.topics import chunk_topic, device_topic
from faults.kit import baseline, figure, wait_until
from telemetry_kit import state, window_stats
from test_agent_kit import Server, agent_config, make_manifest, onnx_model, read_retained

OTHERS = [f"d-{i}" for i in range(5)]
FLOOD = 20_000
PER_OTHER = 20
OVERSIZED = 300
RSS_BOUND_MB = 400  # peak resident memory of the collector process, flood and junk included
GROWTH_BOUND_MB = 250  # ... above what it holds once started (126-164 MB seen; the 300
# oversized payloads alone are 300 MiB if the broker handed them over at once)


def _model_ref() -> dict:
    sha = hashlib.sha256(onnx_model(0).data).hexdigest()
    return {"name": "demo", "version": 1, "variant": "onnx-f32", "sha256": sha}


def _window(fleet: str, device: str, seq: int, stats: dict, boot: str = "b0") -> bytes:
    start, end = 1_795_760_000.0 + seq, 1_795_760_001.0 + seq
    msg = telemetry_doc(fleet, device, seq, _model_ref(), stats, start, end, boot=boot)
    return json.dumps(msg).encode()


def _topic(fleet: str, device: str, kind: str = "telemetry") -> str:
    return f"edgeops/{fleet}/devices/{device}/{kind}"


class Rss:
    """The resident memory of a process, sampled every 50 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb, self.samples = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now_kb(self) -> int:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_kb = max(self.peak_kb, self.now_kb())
            self.samples += 1

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


def test_a_flooding_device_does_not_stop_the_others_and_collector_memory_stays_bounded(
    workspace, broker, topic_prefix, tmp_path
):
    fleet = topic_prefix
    stats = window_stats(baseline(), n=20)
    with MqttClient(broker.url) as c:
        c.publish_all([(*state(fleet, d), True) for d in ["flood-0", *OTHERS]])
    log = open(tmp_path / "collector.log", "ab")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-m", "edgeops", "-w", str(workspace.settings.home), "collector",
           "--id", "c-flood", "--duration", "240"]  # fmt: skip
    collector = subprocess.Popen(cmd, env=os.environ.copy(), stdout=log, stderr=log)
    store = MonitoringStore(workspace.db, fleet)
    rss = Rss(collector.pid)
    try:
        wait_until(lambda: len(FleetStore(workspace.db, fleet).devices()) == 6, 30, "the states")
        time.sleep(1.0)  # subscribed and settled
        idle_mb = rss.now_kb() / 1024
        flood = [(_topic(fleet, "flood-0"), _window(fleet, "flood-0", s, stats), False)
                 for s in range(1, FLOOD + 1)]  # fmt: skip
        sent_at: dict[tuple[str, int], float] = {}

        def flood_it() -> None:
            with MqttClient(broker.url) as c:
                c.publish_all(flood, timeout=120)

        def others() -> None:  # one window every 100 ms from each, for 2 s
            with MqttClient(broker.url) as c:
                for seq in range(1, PER_OTHER + 1):
                    for d in OTHERS:
                        sent_at[(d, seq)] = time.time()
                        c.publish(_topic(fleet, d), _window(fleet, d, seq, stats))
                    time.sleep(0.1)

        started = time.monotonic()
        flooder = threading.Thread(target=flood_it)
        flooder.start()
        time.sleep(0.2)  # the flood is under way
        normal = threading.Thread(target=others)
        normal.start()
        normal.join(60)
        wait_until(
            lambda: sum(store.window_count(device=d) for d in OTHERS) == len(OTHERS) * PER_OTHER,
            60,
            "the other devices' windows",
            every=0.2,
        )
        others_done = time.monotonic() - started
        flooder.join(120)
        wait_until(lambda: store.window_count() == FLOOD + len(sent_at), 120, "the flood", 0.2)
        flood_done = time.monotonic() - started
        rows = [w for d in OTHERS for w in store.windows(device=d, limit=None)]
        flood_mb = rss.peak_kb / 1024

        # junk: 300 payloads of 1 MiB (four times the limit), 2,000 that are not JSON
        oversized = b"{" + b" " * (1024 * 1024 - 2) + b"}"
        junk = [(_topic(fleet, "flood-0"), oversized, False)] * OVERSIZED
        junk += [(_topic(fleet, "flood-0"), b"\x00not json %d" % i, False) for i in range(2000)]
        with MqttClient(broker.url) as c:
            c.publish_all(junk, timeout=120)
        wait_until(
            lambda: (
                store.counters().get("oversized") == OVERSIZED
                and store.counters().get("malformed") == 2000
            ),
            60,
            "the junk counted",
            every=0.2,
        )
        assert collector.poll() is None, "the collector died"
    finally:
        peak_mb = rss.stop()
        collector.terminate()
        collector.wait(30)
        log.close()
    latency = sorted(
        w.received_at.replace(tzinfo=timezone.utc).timestamp() - sent_at[(w.device_id, w.seq)]
        for w in rows
    )
    figure(
        f"flood: {len(rows)} of {len(sent_at)} windows of 5 other devices stored during a "
        f"{FLOOD}-window flood from one device (all in {others_done:.1f} s; latency median "
        f"{latency[len(latency) // 2]:.2f} s, max {latency[-1]:.2f} s; the flood stored in "
        f"{flood_done:.1f} s)"
    )
    figure(
        f"collector memory: peak RSS {peak_mb:.0f} MB (bound {RSS_BOUND_MB} MB): "
        f"{idle_mb:.0f} MB started, {flood_mb:.0f} MB through the flood, {peak_mb:.0f} MB "
        f"through {OVERSIZED} oversized (1 MiB) and 2,000 malformed payloads"
    )
    assert len(rows) == len(sent_at) == len(OTHERS) * PER_OTHER
    assert latency[-1] < 30.0
    assert peak_mb < RSS_BOUND_MB
    assert peak_mb - idle_mb < GROWTH_BOUND_MB


# --- fuzzed payloads ----------------------------------------------------------------------

WRONG = [None, True, False, "x", "", -1, 1.5, [], {}, [1, "a"], {"a": 1}, "\u0000" * 3, "é" * 300]
HUGE = [10**20, 2**53 + 1, 10**400, -(10**400), 1e308, -1e308, 2**1000 + 1]


def _paths(obj: Any, path: tuple = ()) -> list[tuple]:
    """Every place in a JSON value (containers and leaves), the root excluded."""
    out = []
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    )
    for k, v in items:
        out.append((*path, k))
        out.extend(_paths(v, (*path, k)))
    return out


def _set(obj: Any, path: tuple, value: Any) -> Any:
    obj = json.loads(json.dumps(obj))
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = value
    return obj


def _numbers(obj: Any) -> list[tuple]:
    def at(path: tuple) -> Any:
        value = obj
        for k in path:
            value = value[k]
        return value

    return [
        p for p in _paths(obj) if isinstance(at(p), (int, float)) and not isinstance(at(p), bool)
    ]


def junk(valid: dict, limit: int) -> st.SearchStrategy[bytes]:
    """Payloads made from a valid message: random bytes, wrong types, huge numbers, deep
    nesting, oversized; and for telemetry windows wrong bins and negative counts."""
    dumps = lambda o: json.dumps(o).encode()  # noqa: E731
    paths, numbers = _paths(valid), _numbers(valid)
    strategies = [
        st.binary(max_size=2048),
        st.tuples(st.sampled_from(paths), st.sampled_from(WRONG)).map(
            lambda p: dumps(_set(valid, *p))
        ),
        st.tuples(st.sampled_from(numbers), st.sampled_from(HUGE)).map(
            lambda p: dumps(_set(valid, *p))
        ),
        st.tuples(st.integers(10, 100_000), st.booleans()).map(
            lambda p: (
                (b"[" * p[0] + b"]" * p[0])
                if p[1]
                else dumps({**valid, "stats": "NEST"}).replace(
                    b'"NEST"', b'{"a":' * p[0] + b"1" + b"}" * p[0]
                )
            )
        ),
        st.integers(limit + 1, limit + 100_000).map(
            lambda n: dumps({**valid, "pad": "x" * n})[: max(n, limit + 1)]
        ),
    ]
    if valid.get("type") == "telemetry":
        hists = [("stats", "features", j) for j in range(len(valid["stats"]["features"]))]
        hists += [("stats", k) for k in ("class_counts", "confidence_counts", "latency_counts")]

        def at(path: tuple) -> list:
            value: Any = valid
            for k in path:
                value = value[k]
            return value

        strategies += [
            st.tuples(st.sampled_from(hists), st.booleans()).map(  # wrong bins
                lambda p: dumps(_set(valid, p[0], at(p[0])[:-1] if p[1] else [*at(p[0]), 0]))
            ),
            st.tuples(st.sampled_from(hists), st.integers(1, 10**6)).map(  # negative counts
                lambda p: dumps(_set(valid, p[0], [-p[1], *at(p[0])[1:]]))
            ),
        ]
    return st.one_of(*strategies)


HYPOTHESIS = {"derandomize": True, "deadline": None, "database": None}


def test_fuzzed_payloads_never_crash_the_agent(broker, topic_prefix, tmp_path):
    private, public = generate_keypair()
    server = Server(broker, topic_prefix, private)
    limit = 64 * 1024
    config = agent_config(
        tmp_path / "a", broker, topic_prefix, public, max_message_bytes=limit,
        download_timeout_s=300.0,
        download_stall_s=300.0,  # no re-subscription: every message received is junk
    )  # fmt: skip
    agent = Agent(config)
    agent.start()
    try:
        wait_until(lambda: agent.connected, what="agent connected")
        server.deploy(onnx_model(0), "dev-1", 5)
        server.wait_event("dev-1", "activated", 5)
        agent.wait_idle()
        v1_chunks = agent.stats["chunks_stored"]
        # a download in progress: v2, whose chunks 3-6 are withheld for now
        v2 = make_manifest(onnx_model(1), fleet=topic_prefix, device="dev-1", seq=6)
        sha = server.publish_artifact(onnx_model(1).data, 64, skip=(3, 4, 5, 6))
        envelope = server.sign(v2)
        server.desire("dev-1", v2)
        wait_until(lambda: agent.stats["chunks_stored"] == v1_chunks + 3, what="a partial download")
        agent.wait_idle()
        before = agent.stats
        sent = [0]
        desired = device_topic(topic_prefix, "dev-1", "desired")
        chunk_topics = [chunk_topic(topic_prefix, sha, i) for i in (0, 3, 6, 7, 10**6)]
        chunk_topics += [f"edgeops/{topic_prefix}/artifacts/{sha}/{i}" for i in ("x", "-1", "")]
        targets = st.one_of(
            st.tuples(st.just(desired), junk(envelope, limit)),
            st.tuples(st.sampled_from(chunk_topics), st.binary(min_size=0, max_size=200)),
        )

        @settings(
            max_examples=250,
            suppress_health_check=list(HealthCheck),
            **HYPOTHESIS,
        )
        @given(message=targets)
        def feed(message: tuple[str, bytes]) -> None:
            server.publish(message[0], message[1], retain=False)
            sent[0] += 1

        feed()
        wait_until(
            lambda: agent.stats["messages_received"] - before["messages_received"] == sent[0],
            30,
            "every junk message received",
        )
        assert agent.wait_idle()
        after = agent.stats
        grew = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        refused = {
            k: v for k, v in grew.items()
            if k in ("malformed", "rejected", "other_device", "unknown_topic", "desired_cleared",
                     "desired_already_handled", "dropped_oversized", "dropped_queue_full")
            or (k.startswith("chunks_") and k != "chunks_stored")
        }  # fmt: skip
        serving = agent.predictor.predict_features(onnx_model(0).matrix)
        state = read_retained(broker, device_topic(topic_prefix, "dev-1", "state"))
        # ... and it still deploys: the withheld chunks come, v2 activates
        server.publish_artifact(onnx_model(1).data, 64)
        server.wait_event("dev-1", "activated", 6, timeout=30)
    finally:
        agent.stop()
        server.close()
    how = ", ".join(f"{k} {v}" for k, v in sorted(refused.items()))
    figure(
        f"agent fuzz: {sent[0]} junk messages on its desired and chunk topics, "
        f"{sum(refused.values())} refused and counted ({how}); "
        f"internal errors {grew.get('internal_errors', 0)}; still serving, state online, "
        "and the download in progress completed"
    )
    assert sum(refused.values()) == sent[0]
    assert "internal_errors" not in grew and "chunks_stored" not in grew
    assert len(serving) == 8 and state["online"] and state["model"]["seq"] == 5


def test_fuzzed_payloads_never_crash_the_collector(workspace, broker, topic_prefix):
    fleet = topic_prefix
    stats = window_stats(baseline(), n=20)
    model = _model_ref()
    devices = ["d-0", "d-1"]
    with MqttClient(broker.url) as c:
        c.publish_all([(*state(fleet, d), True) for d in devices])
    valid = {
        "telemetry": json.loads(_window(fleet, "d-0", 1, stats)),
        "samples": {
            "protocol": 1, "type": "sample", "fleet": fleet, "device": "d-0", "boot": "b0",
            "seq": 1, "ts": 1_795_760_000.0, "sample_id": "d-0/b0/1", "model": model,
            "input": None, "features": [0.1, 0.2, 0.3, 0.4], "outputs": [0.3, 0.7],
            "predicted": "yes",
        },
        "labels": {
            "protocol": 1, "type": "label", "fleet": fleet, "device": "d-0",
            "sample_id": "d-0/b0/1", "label": "no", "ts": 1_795_760_100.0,
        },
        "events": json.loads(event_message(
            fleet=fleet, device="d-0", boot="b0", ts=1_795_760_001.0, seq=3,
            deployment="r/d-0", rollout="r", event="activated", reason="",
        )),
        "state": json.loads(state(fleet, "d-0")[1]),
    }  # fmt: skip
    options = CollectorOptions(client_id=f"c-{fleet}"[:60], batch_size=50, linger=0.02)
    collector = Collector(Ingestor(workspace.db, fleet), broker.url, options).start()
    running = threading.Thread(target=collector.run, daemon=True)
    running.start()
    store = MonitoringStore(workspace.db, fleet)
    good: list[int] = []
    try:
        wait_until(lambda: len(FleetStore(workspace.db, fleet).devices()) == 2, what="states")
        time.sleep(0.5)
        received, accepted, rejected = (
            collector.received,
            sum(collector.accepted.values()),
            sum(collector.rejected.values()),
        )
        kinds = st.sampled_from(sorted(valid))
        messages = kinds.flatmap(lambda k: st.tuples(st.just(k), junk(valid[k], MAX_BYTES[k])))
        sent = [0]
        with MqttClient(broker.url) as c:

            @settings(max_examples=400, suppress_health_check=list(HealthCheck), **HYPOTHESIS)
            @given(message=messages)
            def feed(message: tuple[str, bytes]) -> None:
                kind, payload = message
                c.publish(
                    _topic(fleet, "d-1", kind) if kind == "state" else _topic(fleet, "d-0", kind),
                    payload.replace(b'"d-0"', b'"d-1"') if kind == "state" else payload,
                ).wait_for_publish(10)
                sent[0] += 1
                if sent[0] % 20 == 0:  # a valid window between the junk, from the other device
                    good.append(len(good) + 1)
                    c.publish(_topic(fleet, "d-1"), _window(fleet, "d-1", good[-1], stats, "g"))

            feed()
        total = sent[0] + len(good)
        wait_until(lambda: collector.received - received >= total, 60, "every message handled")
        time.sleep(0.5)
        alive = running.is_alive()
        stored_good = store.window_count(device="d-1")
        # after the junk, it still stores
        with MqttClient(broker.url) as c:
            c.publish_all(
                [(_topic(fleet, "d-1"), _window(fleet, "d-1", 10_000, stats, "g"), False)]
            )
        wait_until(lambda: store.window_count(device="d-1") == stored_good + 1, 30, "a last window")
    finally:
        collector.stop()
        running.join(30)
        collector.close()
    acc = sum(collector.accepted.values()) - accepted
    rej = sum(collector.rejected.values()) - rejected
    reasons = dict(collector.rejected)
    how = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    figure(
        f"collector fuzz: {sent[0]} junk messages on telemetry, samples, labels, events and "
        f"state topics: {rej} refused and counted ({how}), "
        f"{acc - len(good) - 1} still valid after mutation and stored; {stored_good} of "
        f"{len(good)} valid windows sent between them stored; internal errors "
        f"{reasons.get('internal_error', 0)}; collector alive {alive}"
    )
    assert alive and stored_good == len(good)
    assert acc + rej == collector.received - received == total + 1
    assert "internal_error" not in reasons
