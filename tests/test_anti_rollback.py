"""Anti-rollback that survives a reinstall: ``anti_rollback_file`` keeps the highest seq a
device accepted outside its state directory, so deleting that directory does not let a
replayed old manifest in again. Real agents on Mosquitto; the server is played by hand.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from edgeops_agent.agent import Agent
from edgeops_agent.config import AgentConfig
from edgeops_agent.errors import ConfigError, StoreError
from edgeops_agent.floor import RollbackFloor
from edgeops_protocol.manifest import generate_keypair
from test_agent_kit import Server, agent_config, make_manifest, onnx_model, wait_until

DEV = "dev-1"


# --- the file --------------------------------------------------------------------------------
def test_the_floor_only_goes_up_and_keeps_one_entry_per_device(tmp_path):
    path = tmp_path / "persist" / "rollback.json"
    a = RollbackFloor(path, "lab", "pi-01")
    b = RollbackFloor(path, "lab", "pi-02")
    assert a.read() == 0 and a.entry() is None and not path.exists()
    assert a.raise_to(5, {"name": "har", "version": 2, "variant": "x"}, now=100.0)
    assert not a.raise_to(4, None, now=101.0) and not a.raise_to(5, None, now=101.0)
    assert b.raise_to(9, None, now=102.0)
    assert (a.read(), b.read()) == (5, 9)
    assert json.loads(path.read_bytes()) == {
        "format": 1,
        "devices": {
            "lab/pi-01": {"seq": 5, "model": {"name": "har", "version": 2}, "updated_at": 100.0},
            "lab/pi-02": {"seq": 9, "model": None, "updated_at": 102.0},
        },
    }
    assert RollbackFloor(path, "other", "pi-01").read() == 0

    path.write_text("{not json")
    with pytest.raises(StoreError, match="cannot read the anti-rollback file"):
        a.read()
    path.write_text('{"format": 2, "devices": {}}')
    with pytest.raises(StoreError, match="not an anti-rollback file of format 1"):
        a.raise_to(6, None, now=103.0)


def test_the_file_must_live_outside_the_state_dir(tmp_path):
    base = {"device": "pi", "fleet": "lab", "state_dir": "st", "public_keys": ["A" * 43 + "="]}
    config = AgentConfig.from_dict({**base, "anti_rollback_file": "../keep/floor.json"}, tmp_path)
    assert config.anti_rollback_file == tmp_path / "../keep/floor.json"
    assert AgentConfig.from_dict(base, tmp_path).anti_rollback_file is None
    for inside in ("st/floor.json", "st"):
        with pytest.raises(ConfigError, match="anti_rollback_file must be outside state_dir"):
            AgentConfig.from_dict({**base, "anti_rollback_file": inside}, tmp_path)
    with pytest.raises(ConfigError, match="anti_rollback_file must be str"):
        AgentConfig.from_dict({**base, "anti_rollback_file": 5}, tmp_path)


# --- a reinstalled agent on Mosquitto ----------------------------------------------------------
@pytest.fixture
def rig(broker, topic_prefix, tmp_path):
    private, public = generate_keypair()
    server = Server(broker, topic_prefix, private)
    started: list[Agent] = []

    def start(**over) -> Agent:
        config = agent_config(tmp_path / "state", broker, server.fleet, public, **over)
        agent = Agent(config)
        agent.start()
        started.append(agent)
        wait_until(lambda: agent.connected, what="agent connected")
        return agent

    def stop(agent: Agent) -> None:
        agent.stop()
        started.remove(agent)

    yield server, start, stop, tmp_path
    for agent in started:
        agent.stop()
    server.close()


def _serving_seq(agent):
    model = agent.predictor.model
    return None if model is None else model.ref()["seq"]


def _reinstall(server, start, stop, agent, replay: dict, **over) -> Agent:
    """Stop the agent, delete its state directory, put ``replay`` in its retained desired
    state (what an attacker who can publish there would do), start a fresh agent."""
    stop(agent)
    shutil.rmtree(agent.config.state_dir)
    server.desire(DEV, {**replay, "issued_at": time.time() - 5, "expires_at": time.time() + 3600})
    return start(**over)


def _deploy_3_then_5(server, agent) -> tuple[dict, dict]:
    old = server.deploy(onnx_model(0), DEV, seq=3)
    server.wait_event(DEV, "activated", 3)
    new = server.deploy(onnx_model(1), DEV, seq=5, version=2)
    server.wait_event(DEV, "activated", 5)
    wait_until(lambda: _serving_seq(agent) == 5, what="seq 5 serving")
    return old, new


def test_a_replayed_manifest_is_rejected_after_a_reinstall(rig):
    server, start, stop, tmp = rig
    floor_file = tmp / "persistent" / "edgeops-anti-rollback.json"
    agent = start(anti_rollback_file=str(floor_file))
    old, new = _deploy_3_then_5(server, agent)
    assert RollbackFloor(floor_file, server.fleet, DEV).entry()["model"] == {
        "name": "demo",
        "version": 2,
    }

    again = _reinstall(server, start, stop, agent, old, anti_rollback_file=str(floor_file))
    assert again.store.accepted_seq == 5  # from the file, before any message came
    event = wait_until(
        lambda: next((e for e in server.events(DEV, 3) if e["event"] == "rejected"), None),
        what="seq 3 rejected",
    )
    assert event["reason"] == "replayed manifest: seq 3 is below the accepted 5"
    again.wait_idle()
    assert _serving_seq(again) is None and again.store.accepted_seq == 5
    assert server.event_kinds(DEV, 3).count("activated") == 1  # the first install only
    state = wait_until(lambda: (s := server.last_state(DEV)) and s.get("boot") == again.boot and s)
    assert state["accepted_seq"] == 5 and state["model"] is None

    # the newest manifest it accepted is installed again (it is no rollback) ...
    server.desire(DEV, {**new, "issued_at": time.time() - 5, "expires_at": time.time() + 3600})
    wait_until(lambda: _serving_seq(again) == 5, what="seq 5 installed again")
    assert server.event_kinds(DEV, 5).count("activated") == 2
    # ... once: the same seq after that is "already handled", and a newer one goes through
    server.desire(DEV, new)
    wait_until(lambda: again.stats.get("desired_already_handled") == 1, what="seq 5 ignored")
    server.deploy(onnx_model(0), DEV, seq=6)
    server.wait_event(DEV, "activated", 6)
    assert RollbackFloor(floor_file, server.fleet, DEV).read() == 6


def test_without_the_file_a_reinstall_forgets_and_accepts_the_replay(rig):
    server, start, stop, _ = rig
    agent = start()
    old, _ = _deploy_3_then_5(server, agent)
    again = _reinstall(server, start, stop, agent, old)
    wait_until(lambda: _serving_seq(again) == 3, what="the replay installed")  # the hole


def test_an_older_file_is_raised_to_the_state_dirs_seq_at_start(rig):
    server, start, stop, tmp = rig
    agent = start()
    server.deploy(onnx_model(0), DEV, seq=4)
    server.wait_event(DEV, "activated", 4)
    stop(agent)
    floor_file = tmp / "persistent" / "floor.json"  # configured only now
    again = start(anti_rollback_file=str(floor_file))
    assert RollbackFloor(floor_file, server.fleet, DEV).read() == 4
    assert again.store.accepted_seq == 4 and _serving_seq(again) == 4
    m = make_manifest(onnx_model(1), fleet=server.fleet, device=DEV, seq=2)
    server.desire(DEV, m)
    assert "replayed" in server.wait_event(DEV, "rejected", 2)["reason"]
