"""Rollouts end to end on Mosquitto: the real controller and MQTT adapter, real agent
processes (and in-process simulated agents), real models measured by the pipeline."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgeops import Workspace
from edgeops.fleet.controller import RolloutController, RolloutOptions
from edgeops.fleet.deploy import ManifestOptions
from edgeops.fleet.keys import generate_key
from edgeops.mqtt import MqttClient
from pipeline_kit import trained_workspace
from test_agent_kit import wait_until as _wait_until


def wait_until(cond, timeout=60.0, what="condition"):
    return _wait_until(cond, timeout, what, every=0.1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A workspace with two versions of a small model, each with ONNX variants."""
    return trained_workspace(
        tmp_path_factory.mktemp("fleetws"),
        "mlp",
        {"hidden_layer_sizes": [16]},
        ["onnx-f32", "onnx-int8"],
    )


@pytest.fixture
def fleet(models, broker, topic_prefix, tmp_path, monkeypatch):
    """The model workspace on this test's broker, as a fleet of its own, with a signing key.

    Fleet records, sequence numbers and rollouts are kept per fleet, so tests sharing the
    module's workspace do not see each other's devices.
    """
    monkeypatch.setenv("EDGEOPS_MQTT_URL", broker.url)
    monkeypatch.setenv("EDGEOPS_FLEET", topic_prefix)
    ws = Workspace.open(models)
    key = generate_key(tmp_path / "keys")
    client = MqttClient(broker.url).connect()
    yield ws, key, client
    client.close()
    ws.close()


class Agents:
    """Real `edgeops-agent run` processes, one per device."""

    def __init__(self, root: Path, broker, fleet: str, public_key: bytes) -> None:
        self.root, self.broker, self.fleet, self.public_key = root, broker, fleet, public_key
        self.procs: dict[str, subprocess.Popen] = {}

    def config(self, device: str, tags=("lab",), **simulate) -> Path:
        folder = self.root / device
        folder.mkdir(parents=True, exist_ok=True)
        values = {
            "device": device,
            "fleet": self.fleet,
            "hardware": "rpi4",
            "broker": self.broker.url,
            "state_dir": "state",
            "runtimes": ["onnxruntime"],
            "public_keys": [base64.b64encode(self.public_key).decode()],
            "tags": list(tags),
            "keepalive": 5,
            "download_stall_s": 1.0,
        }
        lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        lines += ["", "[simulate]", *(f"{k} = {json.dumps(v)}" for k, v in simulate.items())]
        (folder / "agent.toml").write_text("\n".join(lines) + "\n")
        return folder / "agent.toml"

    def start(self, device: str) -> None:
        cfg = self.root / device / "agent.toml"
        log = open(self.root / device / "agent.log", "ab")  # noqa: SIM115 - closed with it
        self.procs[device] = subprocess.Popen(
            [sys.executable, "-m", "edgeops_agent", "run", "--config", str(cfg)],
            stdout=log,
            stderr=log,
        )

    def kill(self, device: str) -> None:
        proc = self.procs.pop(device)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


@pytest.fixture
def agents(tmp_path, broker, topic_prefix, fleet):
    a = Agents(tmp_path / "agents", broker, topic_prefix, fleet[1].public)
    yield a
    a.stop_all()


def _online(ctl, client, n):
    ctl.fleet.sync(client, quiet=0.3)
    return sum(d.online for d in ctl.fleet.devices()) >= n


def _versions(ctl, client):
    ctl.fleet.sync(client, quiet=0.3)
    return {d.device_id: (d.state.get("model") or {}).get("version") for d in ctl.fleet.devices()}


def _rollout(ctl, client, ref, selector, until_status=("completed", "aborted"), **opts):
    rid = ctl.create(ref, selector, RolloutOptions(**opts))
    ctl.run(until=lambda: ctl.status(rid)["status"] in until_status, max_seconds=120)
    return rid, ctl.status(rid)


def test_staged_rollout_to_agent_processes_completes(fleet, agents):
    ws, key, client = fleet
    devices = [f"pi-{i}" for i in range(5)]
    for d in devices:
        agents.config(d)
        agents.start(d)
    ctl = RolloutController(ws, key, client)
    wait_until(lambda: _online(ctl, client, 5), what="5 agents online")
    _, st = _rollout(ctl, client, "har@1", "tag:lab", stages=(1.0,), timeout=60)
    assert st["status"] == "completed" and st["counts"]["activated"] == 5
    rid, st = _rollout(ctl, client, "har@2", "tag:lab", stages=(0.2, 0.6, 1.0), timeout=60)
    assert st["status"] == "completed"
    assert st["stage_sizes"] == [1, 3, 5]
    assert wait_until(lambda: set(_versions(ctl, client).values()) == {2}, what="all on v2")
    first_stage = [n for r, n, d in ctl.notes if r == rid and n == "stage_started"]
    assert len(first_stage) == 3
    dev = ctl.fleet.get("pi-0")
    assert dev.state["model"]["variant"] == "onnx-int8"  # best variant for onnxruntime
    assert dev.state["previous"]["version"] == 1
    kinds = [e.event for e in reversed(ctl.fleet.events(device="pi-0", rollout=rid))]
    assert kinds[0] == "downloading" and kinds[-1] == "activated" and "verified" in kinds


def test_failed_health_checks_abort_and_roll_back(fleet, agents):
    ws, key, client = fleet
    for i in range(5):
        agents.config(f"pi-{i}", **({"fail_health": True} if i in (1, 2) else {}))
        agents.start(f"pi-{i}")
    ctl = RolloutController(ws, key, client)
    wait_until(lambda: _online(ctl, client, 5), what="5 agents online")
    # v1 on the healthy devices first (the failing ones fail every health check)
    _, st = _rollout(ctl, client, "har@1", "device:pi-0,pi-3,pi-4", stages=(1.0,), timeout=60)
    assert st["status"] == "completed"
    before = _versions(ctl, client)
    assert before == {"pi-0": 1, "pi-1": None, "pi-2": None, "pi-3": 1, "pi-4": 1}
    # stage 1 = pi-0, pi-1: pi-1 fails its health check → 50% > 20% → abort
    _rid, st = _rollout(
        ctl, client, "har@2", "tag:lab", stages=(0.4, 1.0), max_failures=0.2, timeout=60
    )
    assert st["status"] == "aborted", st
    detail = st["devices_detail"]
    assert detail["pi-1"]["status"] == "failed"
    assert "health" in detail["pi-1"]["reason"]
    assert detail["pi-0"]["status"] == "reverted"
    assert detail["pi-3"]["status"] == "pending"  # stage 2 never started
    wait_until(lambda: _versions(ctl, client) == before, what="every device as before")
    pi0 = ctl.fleet.get("pi-0").state
    # pi-0 went to v2 and back to v1 with a newer manifest: the revert's seq
    assert (pi0["model"]["version"], pi0["model"]["seq"]) == (1, detail["pi-0"]["seq"])
    assert pi0["previous"]["version"] == 2


def test_offline_agent_converges_when_it_returns(fleet, agents):
    ws, key, client = fleet
    for d in ("pi-0", "pi-1", "pi-2"):
        agents.config(d)
    for d in ("pi-0", "pi-1", "pi-2"):
        agents.start(d)
    ctl = RolloutController(ws, key, client)
    wait_until(lambda: _online(ctl, client, 3), what="3 agents online")
    agents.kill("pi-2")  # the broker marks it offline with its last will
    wait_until(lambda: not (_online(ctl, client, 3)), what="pi-2 offline")
    _, st = _rollout(
        ctl, client, "har@1", "tag:lab", stages=(1.0,), timeout=3, retries=0, max_failures=0.5
    )
    assert st["status"] == "completed"
    assert st["devices_detail"]["pi-2"]["status"] == "timed_out"
    agents.start("pi-2")  # back: it reads its retained desired state and converges
    assert wait_until(lambda: _versions(ctl, client).get("pi-2") == 1, what="pi-2 on v1")


def test_agent_killed_mid_download_resumes_and_the_rollout_completes(fleet, agents):
    ws, key, client = fleet
    agents.config("pi-0", download_delay_ms=150)
    agents.start("pi-0")
    ctl = RolloutController(ws, key, client)
    wait_until(lambda: _online(ctl, client, 1), what="agent online")
    rid = ctl.create(
        "har@1",
        "device:pi-0",
        RolloutOptions(stages=(1.0,), timeout=120, manifest=ManifestOptions(chunk_size=512)),
    )
    state_dir = agents.root / "pi-0" / "state"
    ctl.run(until=lambda: len(list(state_dir.rglob("*.chunk"))) >= 3, max_seconds=60)
    agents.kill("pi-0")
    chunks = len(list(state_dir.rglob("*.chunk")))
    assert chunks >= 3
    agents.start("pi-0")
    ctl.run(until=lambda: ctl.status(rid)["status"] == "completed", max_seconds=120)
    assert ctl.status(rid)["counts"]["activated"] == 1
    assert wait_until(lambda: _versions(ctl, client).get("pi-0") == 1, what="pi-0 on v1")


def test_server_restart_mid_rollout_resumes(fleet, agents, models, tmp_path):
    ws, key, client = fleet
    for d in ("pi-0", "pi-1"):
        agents.config(d)
        agents.start(d)
    ctl = RolloutController(ws, key, client)
    wait_until(lambda: _online(ctl, client, 2), what="agents online")
    env = {**os.environ, "EDGEOPS_ROLLOUT_LEASE_S": "2"}
    # the keys the CLI uses are the workspace's: put this test's key there
    keys_dir = ws.settings.keys_dir
    keys_dir.mkdir(parents=True, exist_ok=True)
    (keys_dir / "signing.key").write_text(base64.b64encode(key.private).decode())
    cmd = [
        sys.executable,
        "-m",
        "edgeops",
        "-w",
        str(models),
        "rollout",
        "start",
        "har@2",
        "--target",
        "tag:lab",
        "--stages",
        "50,100",
        "--stage-wait",
        "30s",
        "--json",
    ]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rid = wait_until(lambda: (rows := ctl.list()) and rows[0]["id"], what="rollout created")
    wait_until(lambda: ctl.status(rid)["status"] == "soaking", what="stage 1 done")
    server.send_signal(signal.SIGKILL)  # the server dies during the soak
    server.wait(timeout=10)
    assert ctl.status(rid)["counts"]["activated"] == 1
    done = subprocess.run(
        [sys.executable, "-m", "edgeops", "-w", str(models), "rollout", "resume", rid, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    # resume of a soaking (not paused) rollout is refused by the engine but the request
    # still makes this process drive it to the end once the dead server's lease lapsed
    st = json.loads(done.stdout)
    assert st["status"] == "completed", done.stderr
    assert st["counts"]["activated"] == 2
    (keys_dir / "signing.key").unlink()


def test_thirty_simulated_agents(fleet, tmp_path, topic_prefix, broker):
    from edgeops_agent.config import AgentConfig
    from edgeops_agent.sim import SimulatedFleet

    ws, key, client = fleet
    base = AgentConfig(
        device="x",
        fleet=topic_prefix,
        state_dir=tmp_path / "unused",
        public_keys=(key.public,),
        runtimes=("onnxruntime",),
        broker=broker.url,
        hardware="rpi4",
        tags=("sim",),
    )
    with SimulatedFleet(30, base, tmp_path / "sim") as sim:
        ctl = RolloutController(ws, key, client)
        wait_until(lambda: _online(ctl, client, 30), what="30 simulated agents online")
        _, st = _rollout(ctl, client, "har@2", "tag:sim", stages=(0.1, 0.5, 1.0), timeout=60)
        assert st["status"] == "completed" and st["counts"]["activated"] == 30
        assert all(sim.agent(i).predictor is not None for i in range(30))
