"""The agent as a process: no heavy imports, SIGKILL mid-download and resume, the CLI."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeops_agent.agent import Agent
from edgeops_agent.cli import COMMANDS, main
from edgeops_protocol.topics import chunk_topic
from test_agent_kit import agent_config, make_manifest, onnx_model, wait_until
from test_agent_kit import keys_fixture as keys_fixture
from test_agent_kit import server_fixture as server_fixture

DEV = "dev-1"
HEAVY = {"tensorflow", "pandas", "sqlalchemy", "fastapi", "edgeops", "sklearn", "skl2onnx"}
ZERO_KEY = base64.b64encode(bytes(32)).decode()
README = Path(__file__).resolve().parents[1] / "device_agent" / "README.md"


def write_config(path: Path, broker, fleet: str, public_key: bytes, **over) -> Path:
    """An agent.toml (flat keys, plus a [simulate] table)."""
    simulate = over.pop("simulate", {})
    values = {
        "device": DEV,
        "fleet": fleet,
        "hardware": "test-hw",
        "broker": broker.url,
        "state_dir": "state",
        "runtimes": ["onnxruntime"],
        "public_keys": [base64.b64encode(public_key).decode()],
        "keepalive": 5,
        "download_stall_s": 1.0,
        **over,
    }
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    lines += ["", "[simulate]"] + [f"{k} = {json.dumps(v)}" for k, v in simulate.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def agent_process(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edgeops_agent", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=config.parent,
    )


def test_the_agent_imports_no_heavy_package(broker, server, keys, tmp_path):
    config = write_config(tmp_path / "agent.toml", broker, server.fleet, keys[1], http_port=0)
    server.deploy(onnx_model(0), DEV, seq=4)
    script = textwrap.dedent(
        """
        import json, sys, time
        import edgeops_agent
        import edgeops_agent.cli, edgeops_agent.httpd, edgeops_agent.local, edgeops_agent.sim
        from edgeops_agent import Agent, load_config
        agent = Agent(load_config(sys.argv[1]))
        agent.start()
        deadline = time.monotonic() + 30
        while agent.predictor.model is None and time.monotonic() < deadline:
            time.sleep(0.02)
        served = agent.predictor.predict_features([[0.0, 0.0, 0.0, 0.0]])
        agent.stop()
        print(json.dumps({"served": len(served), "modules": sorted(sys.modules)}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["served"] == 1
    loaded = {m.split(".")[0] for m in report["modules"]}
    assert "edgeops_agent" in loaded and "onnxruntime" in loaded
    assert loaded & HEAVY == set()


def test_an_agent_killed_mid_download_resumes_from_its_chunks(broker, server, keys, tmp_path):
    model = onnx_model(0)
    manifest = make_manifest(model, fleet=server.fleet, device=DEV, seq=7, chunk_size=16)
    total = len(manifest["artifact"]["chunks"])
    sha = manifest["artifact"]["sha256"]
    config = write_config(
        tmp_path / "agent.toml",
        broker,
        server.fleet,
        keys[1],
        simulate={"download_delay_ms": 100},
    )
    proc = agent_process(config)
    try:
        server.publish_artifact(model.data, 16)
        server.desire(DEV, manifest)
        folder = tmp_path / "state" / "downloads" / sha
        wait_until(lambda: folder.exists() and len(list(folder.glob("*.chunk"))) >= 6)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_until(lambda: (s := server.last_state(DEV)) and not s["online"], what="last will")
    held = sorted(int(p.name.split(".")[0]) for p in folder.glob("*.chunk"))
    assert 6 <= len(held) < total
    assert "activated" not in server.event_kinds(DEV, 7)
    # The chunks the device holds disappear from the broker: only the disk can provide them.
    for i in held:
        server.publish(chunk_topic(server.fleet, sha, i), b"")

    write_config(tmp_path / "agent.toml", broker, server.fleet, keys[1])  # no delay now
    proc = agent_process(config)
    try:
        server.wait_event(DEV, "activated", 7, timeout=30)
        downloading = [e for e in server.events(DEV, 7) if e["event"] == "downloading"]
        boots = [e["boot"] for e in downloading]
        resumed = [e for e in downloading if e["boot"] == boots[-1]]
        assert resumed[0]["progress"] == pytest.approx(len(held) / total, abs=1e-3)
        assert resumed[-1]["progress"] == 1.0
        status = subprocess.run(
            [sys.executable, "-m", "edgeops_agent", "status", "--config", str(config), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        state = json.loads(status.stdout)
        assert state["agent_running"] is True and state["slots"][state["active"]]["seq"] == 7
        assert state["deploying"] is None and state["boot"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_until(lambda: (s := server.last_state(DEV)) and not s["online"], what="offline state")


def test_every_cli_command_has_help_and_is_documented(capsys):
    readme = README.read_text()
    for command in COMMANDS:
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        assert stop.value.code == 0
        assert "--config" in capsys.readouterr().out
        assert f"edgeops-agent {command}" in readme, f"README does not show {command}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ('device = "pi"\nfleet = "lab"\nstate_dir = "s"\ncolour = 1\n', "unknown key 'colour'"),
        ('device = "pi"\nfleet = "lab"\n', "missing required key 'state_dir'"),
        (
            f'device = "pi/1"\nfleet = "lab"\nstate_dir = "s"\npublic_keys = ["{ZERO_KEY}"]',
            "device 'pi/1'",
        ),
        (
            'device = "pi"\nfleet = "lab"\nstate_dir = "s"\npublic_keys = ["x"]',
            "public key 'x' is neither a base64 32-byte key nor a readable file",
        ),
        (
            f'device = "pi"\nfleet = "lab"\nstate_dir = "s"\npublic_keys = ["{ZERO_KEY}"]\n'
            'broker = "http://x"',
            "use mqtt://host:port",
        ),
        (
            f'device = "pi"\nfleet = "lab"\nstate_dir = "s"\npublic_keys = ["{ZERO_KEY}"]\n'
            "keepalive = true",
            "keepalive must be int, not bool",
        ),
        (
            f'device = "pi"\nfleet = "lab"\nstate_dir = "s"\npublic_keys = ["{ZERO_KEY}"]\n'
            "[simulate]\nfail_health = 1",
            "simulate.fail_health must be bool",
        ),
        ('device = "pi"\nfleet = "lab"\nstate_dir = "s"\n', "no public_keys (or hmac_keys)"),
        ("device = [", "not valid TOML"),
    ],
)
def test_cli_config_errors_are_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "agent.toml"
    if content is not None:
        path.write_text(content)
    assert main(["status", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("edgeops-agent: error:")


def test_cli_rollback_status_and_predict(broker, server, keys, tmp_path, capsys):
    config_path = write_config(tmp_path / "agent.toml", broker, server.fleet, keys[1])
    config = agent_config(tmp_path / "state", broker, server.fleet, keys[1])
    agent = Agent(config)
    agent.start()
    try:
        server.deploy(onnx_model(0), DEV, seq=5)
        server.wait_event(DEV, "activated", 5)
        server.deploy(onnx_model(1), DEV, seq=6)
        server.wait_event(DEV, "activated", 6)
    finally:
        agent.stop()
    args = ["--config", str(config_path)]

    assert main(["rollback", *args]) == 0  # offline
    assert "(seq 6) to demo v1 (seq 5)" in capsys.readouterr().out
    assert main(["status", *args]) == 0
    status = capsys.readouterr().out
    assert "active: slot a demo v1 onnx-f32 seq 5" in status
    assert "previous: slot b demo v1 onnx-f32 seq 6" in status and "rolled back" in status
    assert "events waiting for a connection: 1" in status and "agent not running" in status

    rows = json.dumps({"rows": onnx_model(0).rows})
    assert main(["predict", *args, "--json", rows]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["seq"] == 5
    scores = [p["scores"] for p in out["predictions"]]
    np.testing.assert_allclose(scores, onnx_model(0).probabilities, atol=1e-6)
    assert main(["predict", *args, "--json", "{"]) == 2
    assert main(["predict", *args, "--json", '{"rows": [{"f0": 1}]}']) == 1
    assert "missing column 'f1'" in capsys.readouterr().err

    agent = Agent(config)  # reports the offline rollback when it connects
    agent.start()
    try:
        event = server.wait_event(DEV, "rolled_back", 6)
        assert event["reason"] == "local rollback (edgeops-agent rollback)"
        assert agent.predictor.model.ref()["seq"] == 5
        # a rollback while the agent runs: the agent notices within a tick
        assert main(["rollback", *args, "--reason", "operator says so"]) == 0
        wait_until(lambda: agent.predictor.model.ref()["seq"] == 6, what="agent reloaded")
        event = server.wait_event(DEV, "rolled_back", 5)
        assert event["reason"] == "operator says so"
        wait_until(lambda: (s := server.last_state(DEV)) and s["model"]["seq"] == 6)
        assert agent.store.snapshot()["pending_events"] == []
    finally:
        agent.stop()
    assert main(["rollback", "--config", str(config_path)]) == 0
    os.remove(tmp_path / "state" / "slots" / "a" / "model.bin")
    assert main(["predict", *args, "--json", rows]) == 1
    assert "cannot be read" in capsys.readouterr().err


def test_two_agents_cannot_share_a_state_dir(broker, server, keys, tmp_path):
    config = agent_config(tmp_path / "state", broker, server.fleet, keys[1])
    first = Agent(config)
    first.start()
    try:
        from edgeops_agent.errors import StoreError

        with pytest.raises(StoreError, match="another agent is running"):
            Agent(config).start()
    finally:
        first.stop()


def test_status_of_a_state_dir_the_agent_never_used_creates_nothing(tmp_path, capsys):
    (tmp_path / "agent.toml").write_text(
        f'device = "pi"\nfleet = "lab"\nstate_dir = "never"\npublic_keys = ["{ZERO_KEY}"]\n'
    )
    for command in (["status"], ["rollback"], ["predict", "--json", '{"rows": [{}]}']):
        assert main([*command, "--config", str(tmp_path / "agent.toml")]) == 1
        assert "holds no agent state" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
