"""Client certificates and logins of real devices on Mosquitto (issue 8).

The broker is configured by ``edgeops broker config`` (password files, ACLs, a TLS
device listener; ``--client-certs`` adds ``require_certificate true``) and started
on free ports; the devices are provisioned by ``edgeops fleet provision``:

- the real agent (``python -m edgeops_agent run``) with the ``agent.toml``
  provisioning wrote connects over mqtts with its client certificate and publishes
  its state, which the ``server`` account receives; the same agent with another
  CA's certificate, or with none, is refused; a config with only one of
  ``cert_file`` / ``key_file`` is refused with a one-line error;
- the C host firmware (``ports/host``, built with gcc and libmosquitto) with the
  ``device.toml`` of ``fleet provision --host-firmware``: it logs in over TLS with
  its password (and its client certificate on a ``--client-certs`` broker), reads its
  own desired state and writes its own events through the ACL; a wrong password,
  or no certificate where one is required, is refused and logged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeops.config import tomllib
from edgeops.mqtt import MqttClient
from edgeops_protocol.messages import parse_event, parse_state
from test_provision import Fleet, _cli, login


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    f.stop()


def _server(fleet: Fleet, *filters: str) -> MqttClient:
    """The `server` account on the service listener, subscribed to ``filters``."""
    client = MqttClient(fleet.credentials["server"], client_id="test-server").connect()
    for topic in filters:
        client.subscribe(topic)
    client.wait_subscribed()
    return client


def _states(client: MqttClient, device: str, seconds: float, until=None) -> list[dict]:
    """States of ``device`` arriving within ``seconds`` (early once ``until(states)``)."""
    got: list[dict] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for msg in client.drain(min(0.5, max(0.01, deadline - time.monotonic()))):
            if msg.topic.endswith("/state"):
                state = parse_state(msg.payload)
                if state["device"] == device:
                    got.append(state)
        if until is not None and until(got):
            break
    return got


def _foreign_certificate(tmp: Path, device: str) -> tuple[Path, Path]:
    """A client certificate for ``device`` from another CA (another workspace's fleet CA)."""
    from edgeops.fleet.provision import issue_certificate

    key_pem, cert_pem, _ = issue_certificate(tmp / "other-ca", "lab", device)
    (tmp / "foreign.pem").write_bytes(cert_pem)
    (tmp / "foreign.key").write_bytes(key_pem)
    return tmp / "foreign.pem", tmp / "foreign.key"


# --- the agent --------------------------------------------------------------------------


def _agent(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edgeops_agent", "run", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


def test_a_provisioned_agent_connects_with_its_client_certificate(fleet, tmp_path):
    from edgeops_agent.config import load_config

    out = json.loads(
        fleet.provision("pi-07", "--cert", "--state-dir", str(tmp_path / "state"), "--json").output
    )
    fleet.provision("pi-08")  # no certificate
    written = fleet.configure("--client-certs")
    assert written["devices"] == ["pi-07", "pi-08"]
    assert written["without_certificate"] == ["pi-08"]
    conf = (fleet.conf_dir / "mosquitto.conf").read_text()
    assert "require_certificate true" in conf

    # agent.toml names the certificate and key, next to it; the secret files are 0600
    folder = fleet.agent_toml("pi-07").parent
    raw = tomllib.loads(fleet.agent_toml("pi-07").read_text())
    assert (raw["ca_file"], raw["cert_file"], raw["key_file"]) == (
        "ca.pem", "device.pem", "device.key",
    )  # fmt: skip
    assert out["files"]["certificate"] == str(folder / "device.pem")
    assert out["certificate"]["sha256"] and out["certificate"]["serial"]
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes == {"agent.toml": 0o600, "device.key": 0o600, "device.pem": 0o644,
                     "ca.pem": 0o644}  # fmt: skip
    assert folder.stat().st_mode & 0o777 == 0o700
    cfg = load_config(fleet.agent_toml("pi-07"))
    assert (cfg.cert_file, cfg.key_file) == (folder / "device.pem", folder / "device.key")

    fleet.start()
    server = _server(fleet, "edgeops/lab/devices/+/state")
    agent = _agent(fleet.agent_toml("pi-07"), tmp_path / "agent.log")
    try:
        online = _states(server, "pi-07", 30, until=lambda s: any(x["online"] for x in s))
        assert online and online[-1]["online"] is True, (tmp_path / "agent.log").read_text()
        state = online[-1]
        assert (state["fleet"], state["device"]) == ("lab", "pi-07")
        assert agent.poll() is None
    finally:
        code = _stop(agent)
    assert code == 0, (tmp_path / "agent.log").read_text()
    offline = _states(server, "pi-07", 10, until=lambda s: any(not x["online"] for x in s))
    server.close()
    assert [s["online"] for s in offline][-1:] == [False]  # its clean stop, published


def _link_connects(cfg, seconds: float) -> bool:
    from edgeops_agent.mqtt import MqttLink

    connected = threading.Event()
    link = MqttLink(
        cfg,
        will=(f"edgeops/lab/devices/{cfg.device}/state", b'{"online": false}'),
        on_message=lambda t, p: None,
        on_connect=connected.set,
        on_disconnect=lambda: None,
    )
    link.start()
    try:
        return connected.wait(seconds)
    finally:
        link.stop()


def test_a_device_without_the_fleet_certificate_is_refused(fleet, tmp_path, caplog):
    from edgeops_agent.config import load_config

    fleet.provision("pi-07", "--cert", "--state-dir", str(tmp_path / "state"))
    fleet.configure("--client-certs")
    fleet.start()
    cfg = load_config(fleet.agent_toml("pi-07"))
    foreign = _foreign_certificate(tmp_path, "pi-07")
    ca = fleet.conf_dir / "ca.pem"

    # the agent's own MQTT link: its certificate gets in; another CA's or none does not
    assert _link_connects(cfg, 10)
    caplog.set_level("WARNING", logger="edgeops_agent.mqtt")

    def logged() -> str:  # what the agent logged about it, then forget
        text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("edgeops"))
        caplog.clear()
        return text.lower()

    logged()
    assert not _link_connects(cfg.replace(cert_file=foreign[0], key_file=foreign[1]), 3)
    assert "alert unknown ca" in logged()  # the broker's answer to another CA's certificate
    assert not _link_connects(cfg.replace(cert_file=None, key_file=None), 3)
    assert "certificate required" in logged()

    # the same three with a plain MQTT client, password right each time
    mine = (cfg.cert_file, cfg.key_file)
    assert login(fleet.port, ca, "pi-07", cfg.password, cert=mine) == "Success"
    assert login(fleet.port, ca, "pi-07", cfg.password, cert=foreign) != "Success"
    assert login(fleet.port, ca, "pi-07", cfg.password) != "Success"
    log = (fleet.run_dir / "mosquitto.log").read_text()
    assert "certificate verify failed" in log or "peer did not return a certificate" in log


def test_agent_config_with_one_of_cert_and_key_is_refused_in_one_line(fleet, tmp_path):
    from edgeops_agent.config import ConfigError, load_config

    fleet.provision("pi-07", "--cert", "--state-dir", str(tmp_path / "state"))
    path = fleet.agent_toml("pi-07")
    full = path.read_text()

    def variant(name: str, text: str) -> Path:
        p = path.parent / name
        p.write_text(text)
        return p

    only_cert = variant("only-cert.toml", full.replace('key_file = "device.key"\n', ""))
    only_key = variant("only-key.toml", full.replace('cert_file = "device.pem"\n', ""))
    missing = variant("missing.toml", full.replace('"device.key"', '"gone.key"'))
    other = _foreign_certificate(tmp_path, "pi-07")
    mismatched = variant("mismatch.toml", full.replace('"device.key"', json.dumps(str(other[1]))))
    plain = variant("plain.toml", full.replace(f'"{fleet.url}"', '"mqtt://127.0.0.1:1883"'))
    expected = {
        only_cert: "give both cert_file and key_file (a client certificate and its key)",
        only_key: "give both cert_file and key_file (a client certificate and its key)",
        missing: f"cannot read key_file {path.parent / 'gone.key'}: No such file or directory",
        mismatched: f"cert_file {path.parent / 'device.pem'} and key_file {other[1]} must be a "
        "PEM certificate and its unencrypted PEM key",
        plain: "cert_file and key_file need an mqtts:// broker",
    }
    for p, message in expected.items():
        with pytest.raises(ConfigError) as info:
            load_config(p)
        assert str(info.value).startswith(f"{p}: {message}"), str(info.value)
        assert "\n" not in str(info.value)

    # the agent's command line: exit 2 and the one line, nothing else
    done = subprocess.run(
        [sys.executable, "-m", "edgeops_agent", "run", "--config", str(only_cert)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        f"edgeops-agent: error: {only_cert}: give both cert_file and key_file (a client "
        "certificate and its key)\n"
    )

    # and provisioning refuses a client certificate for a broker without TLS
    refused = fleet.provision("pi-09", "--cert", "--broker", "mqtt://127.0.0.1:1883", code=2)
    assert "--cert needs an mqtts:// broker" in refused.output
    assert not (path.parent.parent / "pi-09").exists()


# --- the host firmware ------------------------------------------------------------------


@pytest.fixture(scope="module")
def firmware_bin(tmp_path_factory) -> Path:
    from edgeops.firmware.build import build_host, has_libmosquitto

    if not has_libmosquitto():
        if os.environ.get("CI"):
            pytest.fail("libmosquitto-dev is required in CI (apt-get install libmosquitto-dev)")
        pytest.skip("libmosquitto-dev is not installed")
    return build_host(tmp_path_factory.mktemp("fw-host"))


class Firmware:
    """``edgeops-firmware --config FILE`` as a process, its standard error in a log file."""

    def __init__(self, binary: Path, config: Path) -> None:
        self.log_path = config.with_suffix(".log")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "--config", str(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        code = _stop(self.proc)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return code


def _events(client: MqttClient, device: str, seconds: float) -> list[dict]:
    """The first event of ``device`` arriving within ``seconds`` (none: empty)."""
    got = []
    for msg in client.drain(seconds):
        if msg.topic.endswith("/events"):
            event = parse_event(msg.payload)
            if event["device"] == device:
                got.append(event)
                break
    return got


def test_host_firmware_logs_in_with_its_provisioned_password(fleet, firmware_bin):
    from edgeops.firmware.signing import load_device_keys

    out = json.loads(fleet.provision("mcu-1", "--host-firmware", "--json").output)
    folder = fleet.agent_toml("mcu-1").parent
    device_toml = folder / "device.toml"
    assert out["files"]["firmware_config"] == str(device_toml)
    assert device_toml.stat().st_mode & 0o777 == 0o600
    fw_cfg = tomllib.loads(device_toml.read_text())
    key = load_device_keys(fleet.ws / ".edgeops" / "keys")["mcu-1"]
    assert fw_cfg == {
        "device": "mcu-1", "fleet": "lab", "broker": fleet.url, "username": "mcu-1",
        "password": fleet.password("mcu-1"), "hardware": "host-sim", "tags": [],
        "state_dir": "state", "hmac_key_id": key.key_id, "hmac_key": key.key_b64,
        "ca_file": "ca.pem",
    }  # fmt: skip
    assert out["hmac_key_id"] == key.key_id
    audit = _cli(fleet.ws, "audit", "list", "--json").output
    assert key.key_id in audit  # the new HMAC key is on the record

    fleet.configure()
    fleet.start()
    server = _server(fleet, "edgeops/lab/devices/+/state", "edgeops/lab/devices/+/events")
    try:
        # a wrong password: refused, logged, retried with a backoff, never online
        wrong = folder / "wrong.toml"
        wrong.write_text(device_toml.read_text().replace(fw_cfg["password"], "x" * 32))
        bad = Firmware(firmware_bin, wrong)
        try:
            assert _states(server, "mcu-1", 4) == []
            assert bad.proc.poll() is None
        finally:
            assert bad.stop() == 0
        refusals = [ln for ln in bad.log().splitlines() if "connection refused" in ln]
        assert refusals and "not authorised" in refusals[0].lower(), bad.log()
        assert len(refusals) <= 8, bad.log()  # then 0.25 s, 0.5 s, 1 s ...: no busy loop

        # the provisioned config: online, over TLS, through the ACL
        fw = Firmware(firmware_bin, device_toml)
        try:
            online = _states(server, "mcu-1", 20, until=lambda s: any(x["online"] for x in s))
            assert online and online[-1]["online"] is True, fw.log()
            assert online[-1]["hardware"] == "host-sim"
            assert online[-1]["runtimes"] == ["emlearn"]
            # its own desired state reaches it, and its own events reach the server
            server.publish_all([("edgeops/lab/devices/mcu-1/desired", b"{not json", True)])
            events = _events(server, "mcu-1", 10)
            assert [e["event"] for e in events] == ["rejected"], fw.log()
            assert events[0]["reason"].startswith("malformed desired state: malformed JSON")
        finally:
            assert fw.stop() == 0
        assert "connection refused" not in fw.log()
    finally:
        server.close()


def test_host_firmware_presents_its_client_certificate(fleet, firmware_bin):
    many = fleet.provision("mcu-9", "--host-firmware", "--tags", "a,b,c,d,e,f,g,h,i", code=2)
    assert "the host firmware takes at most 8 tags of at most 63 bytes each" in many.output
    assert not (fleet.ws / ".edgeops/keys/identities.json").exists()  # nothing provisioned
    fleet.provision("mcu-2", "--host-firmware", "--cert")
    fleet.configure("--client-certs")
    folder = fleet.agent_toml("mcu-2").parent
    device_toml = folder / "device.toml"
    fw_cfg = tomllib.loads(device_toml.read_text())
    assert (fw_cfg["cert_file"], fw_cfg["key_file"]) == ("device.pem", "device.key")

    # bad TLS settings are refused at start, in one line
    text = device_toml.read_text()
    cases = {
        text.replace('key_file = "device.key"\n', ""):
            "give both cert_file and key_file (a client certificate and its key)",
        text.replace('"device.key"', '"gone.key"'): f"cannot read key_file {folder}/gone.key",
        text.replace(fleet.url, "mqtt://127.0.0.1:1883"): "ca_file needs an mqtts:// broker",
        text.replace('username = "mcu-2"\n', ""): "a password needs a username",
    }  # fmt: skip
    bad = folder / "bad.toml"
    for content, message in cases.items():
        bad.write_text(content)
        done = subprocess.run([str(firmware_bin), "--config", str(bad)], capture_output=True,
                              text=True, timeout=30)  # fmt: skip
        assert (done.returncode, done.stderr) == (2, f"edgeops-firmware: {bad}: {message}\n")

    fleet.start()
    server = _server(fleet, "edgeops/lab/devices/+/state")
    try:
        # without its certificate: the TLS handshake fails, logged; never online
        bare = folder / "bare.toml"
        bare.write_text(text.replace('cert_file = "device.pem"\n', "").replace(
            'key_file = "device.key"\n', ""))  # fmt: skip
        no_cert = Firmware(firmware_bin, bare)
        try:
            assert _states(server, "mcu-2", 4) == []
        finally:
            assert no_cert.stop() == 0
        assert "tlsv13 alert certificate required" in no_cert.log(), no_cert.log()

        fw = Firmware(firmware_bin, device_toml)
        try:
            online = _states(server, "mcu-2", 20, until=lambda s: any(x["online"] for x in s))
            assert online and online[-1]["online"] is True, fw.log()
        finally:
            assert fw.stop() == 0
    finally:
        server.close()
