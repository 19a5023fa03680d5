"""The broker restarts (Mosquitto, with persistence) in the middle of a rollout and in the
middle of a telemetry stream.

Rollout: the real controller drives a staged rollout to real agent processes that
download a model in many chunks; the broker is restarted while they are downloading. The
rollout must complete, every device on the new model.

Telemetry: real agents (in this process, so the test can predict with them) send
statistics windows through their outboxes while the real collector stores them; the
broker is restarted twice meanwhile. Every window an agent made must be stored, and none
twice: the agents' ``(device, boot, seq)`` are compared with the stored ones.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest

from edgeops.fleet.controller import TERMINAL, RolloutController, RolloutOptions
from edgeops.fleet.deploy import ManifestOptions
from edgeops.monitoring.collector import Collector, CollectorOptions
from edgeops.monitoring.ingest import Ingestor
from edgeops.monitoring.store import MonitoringStore
from edgeops.mqtt import MqttClient
from edgeops_agent.agent import Agent
from edgeops_protocol.manifest import generate_keypair
from faults.kit import (
    agent_values,
    baseline,
    figure,
    start_agent,
    stop_agent,
    wait_until,
    write_config,
)
from test_agent_kit import Server, agent_config, onnx_model


def _versions(ctl: RolloutController, client: MqttClient) -> dict:
    ctl.fleet.sync(client, quiet=0.3)
    return {
        d.device_id: (d.state.get("model") or {}).get("version")
        for d in ctl.fleet.devices()
        if d.online
    }


def test_a_broker_restart_mid_rollout_and_the_rollout_completes(
    workspace, signing_key, broker, topic_prefix, tmp_path
):
    devices = [f"pi-{i}" for i in range(4)]
    procs = {}
    for d in devices:  # 34 chunks at 40 ms each: over a second of download per device
        values = agent_values(
            d, topic_prefix, broker, signing_key.public, tags=["lab"],
            simulate={"download_delay_ms": 40},
        )  # fmt: skip
        procs[d] = start_agent(write_config(tmp_path / d, values))
    client = MqttClient(broker.url).connect()
    ctl = RolloutController(workspace, signing_key, client)
    errors: list[BaseException] = []
    try:
        wait_until(lambda: len(_versions(ctl, client)) == 4, what="4 agents online")
        opts = RolloutOptions(
            stages=(0.5, 1.0),
            timeout=20,
            retries=3,
            max_failures=0.25,
            manifest=ManifestOptions(chunk_size=12),
        )
        rid = ctl.create("demo@1", "tag:lab", opts)

        def drive() -> None:  # what `edgeops rollout start` does, across the restart
            try:
                ctl.run(until=lambda: ctl.status(rid)["status"] in TERMINAL, max_seconds=150)
            except BaseException as exc:  # reported below
                errors.append(exc)

        driver = threading.Thread(target=drive, daemon=True)
        started = time.monotonic()
        driver.start()
        downloads = [tmp_path / d / "state" / "downloads" for d in devices]
        wait_until(
            lambda: any(len(list(p.rglob("*.chunk"))) >= 5 for p in downloads),
            what="a download under way",
        )
        chunks_held = sum(len(list(p.rglob("*.chunk"))) for p in downloads)
        broker.restart()
        restarted = time.monotonic()
        driver.join(170)
        assert not errors, f"the rollout driver failed after the broker restart: {errors[0]!r}"
        assert not driver.is_alive(), "the rollout did not end"
        st = ctl.status(rid)
        took = time.monotonic() - restarted
        retried = sum(1 for x in st["devices_detail"].values() if x["attempt"] > 1)
        on_v1 = wait_until(
            lambda: (v := _versions(ctl, client)) and all(v.get(d) == 1 for d in devices) and v,
            what="every device reporting demo v1",
        )
    finally:
        client.close()
        for proc in procs.values():
            stop_agent(proc)
    figure(
        f"broker restart mid-rollout: rollout {st['status']}, {st['counts']['activated']} of "
        f"{len(devices)} devices activated and {len(on_v1)} reporting the new model "
        f"({chunks_held} chunks on disk at the restart; {retried} devices needed a retried "
        f"manifest; done {took:.1f} s after the restart, {time.monotonic() - started:.1f} s "
        "in all)"
    )
    assert st["status"] == "completed", st
    assert st["counts"]["activated"] == len(devices)


DEVICES = ("t-0", "t-1", "t-2")
PREDICTIONS = 600  # per device, in windows of 10
WINDOW = 10


# Mosquitto 2.0 keeps a persistent session's queued messages across a restart but not its
# *shared* subscriptions: until the collector subscribes again, the broker acknowledges and
# drops what devices publish. The collector's end-to-end acks cover that: a window stays in
# the agent's outbox until the collector has committed it, and is sent again after
# outbox_ack_timeout_s (docs/reliability.md). A plain subscription (MQTT 3.1.1 collector)
# is restored with the session, so there nothing is even sent twice.
ACK_TIMEOUT_S = 2.0


@pytest.mark.parametrize(
    "protocol",
    [
        pytest.param("3.1.1", id="plain-subscription"),
        pytest.param("5", id="shared-subscription"),
    ],
)
def test_broker_restarts_mid_telemetry_lose_no_window_and_store_none_twice(
    protocol, workspace, broker, topic_prefix, tmp_path
):
    private, public = generate_keypair()
    server = Server(broker, topic_prefix, private)
    options = CollectorOptions(
        client_id=f"c-{topic_prefix}"[:60], protocol=protocol, batch_size=50, linger=0.02
    )
    collector = Collector(Ingestor(workspace.db, topic_prefix), broker.url, options).start()
    running = threading.Thread(target=collector.run, daemon=True)
    running.start()
    agents: list[Agent] = []
    try:
        for d in DEVICES:
            config = agent_config(
                tmp_path / d, broker, topic_prefix, public, device=d,
                telemetry_window_count=WINDOW, reconnect_min_s=1.0, reconnect_max_s=2.0,
                outbox_ack_timeout_s=ACK_TIMEOUT_S,
            )  # fmt: skip
            agent = Agent(config)
            agent.start()
            agents.append(agent)
            server.deploy(onnx_model(0), d, 5, serving={"baseline": baseline()})
            server.wait_event(d, "activated", 5)
            wait_until(lambda a=agent: a.predictor.model is not None, what=f"{d} serving")

        x = np.random.default_rng(0).normal(size=(PREDICTIONS, 4)).astype(np.float32)

        def predict(agent: Agent) -> None:  # about 100 predictions a second, for 6 s
            for i in range(PREDICTIONS):
                agent.predictor.predict_features(x[i : i + 1])
                time.sleep(0.01)

        threads = [threading.Thread(target=predict, args=(a,)) for a in agents]
        for t in threads:
            t.start()
        time.sleep(1.5)
        broker.restart()
        time.sleep(2.0)
        broker.restart()
        for t in threads:
            t.join(60)
        expected = {(a.config.device, a.boot, s) for a in agents for s in range(1, 61)}
        for a in agents:
            wait_until(lambda a=a: a.stats.get("telemetry_windows") == PREDICTIONS // WINDOW)
            wait_until(lambda a=a: a._sender is not None and a._sender.settled, 60, "all acked")
        store = MonitoringStore(workspace.db, topic_prefix)
        count, since = -1, time.monotonic()
        while count < len(expected) and time.monotonic() - since < 5:  # then count the missing
            if store.window_count() != count:
                count, since = store.window_count(), time.monotonic()
            time.sleep(0.2)
        time.sleep(1.0)  # a late redelivery would show now
        rows = store.windows(limit=None)
        dropped = sum(a.outbox.dropped for a in agents)
        resent = sum(a._sender.resent for a in agents)
        acked = sum(a._sender.acknowledged for a in agents)
    finally:
        collector.stop()
        running.join(30)
        collector.close()
        for a in agents:
            a.stop()
        server.close()
    stored = Counter((w.device_id, w.boot, w.seq) for w in rows)
    lost = expected - set(stored)
    twice = {k: n for k, n in stored.items() if n > 1}
    unexpected = set(stored) - expected
    duplicates = store.counters().get("duplicate", 0)
    subscription = "shared (MQTT 5)" if protocol == "5" else "plain (MQTT 3.1.1)"
    figure(
        f"broker restarts mid-telemetry, collector on a {subscription} subscription: "
        f"{len(lost)} of {len(expected)} telemetry windows "
        f"lost, {len(twice)} stored twice, {len(unexpected)} stored that no agent sent "
        f"(2 restarts; {duplicates} redelivered copies rejected as duplicate; {resent} sent "
        f"again for want of the collector's ack; outbox drops {dropped})"
    )
    assert not lost, sorted(lost)[:5]
    assert not twice and not unexpected
    assert dropped == 0
    assert acked == len(expected)  # every window acknowledged end to end, once
