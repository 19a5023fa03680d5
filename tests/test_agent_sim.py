"""The fleet simulator: many real agents in one process, sharing one worker pool."""

from __future__ import annotations

import threading

import pytest

from edgeops_agent.sim import SimulatedFleet
from test_agent_kit import agent_config, make_manifest, onnx_model, wait_until
from test_agent_kit import keys_fixture as keys_fixture
from test_agent_kit import server_fixture as server_fixture


def test_a_simulated_fleet_deploys_crashes_and_restarts(broker, server, keys, tmp_path):
    base = agent_config(tmp_path / "unused", broker, server.fleet, keys[1], http_port=0)
    threads_before = threading.active_count()
    fleet = SimulatedFleet(12, base, tmp_path / "fleet")
    assert fleet.devices[0] == "sim-000" and fleet.devices[-1] == "sim-011"
    model = onnx_model(0)
    with fleet:
        wait_until(lambda: all(a is not None and a.connected for a in fleet.agents))
        # one paho thread per agent, one shared worker and one timer thread: nothing more
        assert threading.active_count() - threads_before <= len(fleet) + 2
        server.publish_artifact(model.data, 64)
        for device in fleet.devices:
            server.desire(device, make_manifest(model, fleet=server.fleet, device=device, seq=3))
        for device in fleet.devices:
            server.wait_event(device, "activated", 3)
        assert {a.predictor.model.ref()["seq"] for a in fleet.agents} == {3}
        assert all(a.http_address is None for a in fleet.agents)

        fleet.kill(4)
        assert fleet.agents[4] is None
        wait_until(lambda: not server.last_state("sim-004")["online"], what="last will")
        again = fleet.restart(4)
        assert again.predictor.model.ref()["seq"] == 3 and again.boot.startswith("2-")
        wait_until(lambda: server.last_state("sim-004")["online"], what="back online")
        with pytest.raises(RuntimeError, match="not running"):
            fleet.kill(5)
            fleet.agent(5)
    for device in fleet.devices:
        wait_until(lambda d=device: not server.last_state(d)["online"], what=f"{device} offline")
    assert all(a is None for a in fleet.agents)
