"""Device identities and the broker config on a real Mosquitto started with the generated files.

Every test provisions devices in a workspace of its own, writes the broker config
with ``edgeops broker config`` and starts Mosquitto with it on free ports.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from edgeops.cli import app
from edgeops.config import tomllib
from edgeops.localbroker import find_mosquitto, free_port, start_broker

runner = CliRunner()


def _mosquitto_or_skip() -> None:
    if find_mosquitto() is None:
        if os.environ.get("CI") or os.environ.get("EDGEOPS_REQUIRE_MOSQUITTO") == "1":
            pytest.fail("Mosquitto is required here (CI); apt-get install mosquitto")
        pytest.skip("Mosquitto is not installed")


def _cli(ws: Path, *args: str, code: int = 0):
    result = runner.invoke(app, ["-w", str(ws), *args])
    assert result.exit_code == code, result.output
    return result


class Fleet:
    """A workspace with a signing key, a broker config folder and a running Mosquitto."""

    def __init__(self, tmp: Path, fleet: str = "lab") -> None:
        _mosquitto_or_skip()
        self.ws = tmp / "ws"
        assert runner.invoke(app, ["init", str(self.ws)]).exit_code == 0
        toml = self.ws / "edgeops.toml"
        toml.write_text(toml.read_text().replace('fleet = "default"', f'fleet = "{fleet}"'))
        _cli(self.ws, "keys", "generate")
        self.fleet = fleet
        self.port, self.service_port = free_port(), free_port()
        self.conf_dir = tmp / "broker-conf"
        self.run_dir = tmp / "broker-run"
        self.broker = None
        self.credentials: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def provision(self, device: str, *extra: str, code: int = 0):
        out = self.ws.parent / "devices" / device
        args = ["fleet", "provision", device, "--out", str(out), "--broker", self.url]
        return _cli(self.ws, *args, *extra, code=code)

    def agent_toml(self, device: str) -> Path:
        return self.ws.parent / "devices" / device / "agent.toml"

    def password(self, device: str) -> str:
        return tomllib.loads(self.agent_toml(device).read_text())["password"]

    def configure(self, *extra: str) -> dict:
        result = _cli(
            self.ws, "broker", "config", "--out", str(self.conf_dir), "--self-signed",
            "--listener", str(self.port), "--service-listener", str(self.service_port),
            "--persistence-dir", f"{self.run_dir}/", "--json", *extra,
        )  # fmt: skip
        written = json.loads(result.output)
        self.credentials.update({a["username"]: a["url"] for a in written["created"]})
        return written

    def start(self) -> None:
        conf = self.conf_dir / "mosquitto.conf"
        self.broker = start_broker(self.run_dir, port=self.port, config_file=conf)

    def reload(self) -> None:
        """SIGHUP: Mosquitto reads its password and ACL files again."""
        self.broker.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    f.stop()


def login(
    port: int,
    ca: Path,
    username: str | None,
    password: str | None,
    *,
    client_id: str = "probe",
    cert: tuple[Path, Path] | None = None,
) -> str:
    """The broker's answer to one TLS login: the CONNACK reason, or how the connection ended."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if username is not None:
        c.username_pw_set(username, password)
    c.tls_set(ca_certs=str(ca), certfile=cert and str(cert[0]), keyfile=cert and str(cert[1]))
    got: queue.Queue[str] = queue.Queue()
    c.on_connect = lambda _c, _u, _f, rc, _p: got.put(str(rc))
    c.on_disconnect = lambda _c, _u, _f, rc, _p: got.put(f"dropped: {rc}")
    try:
        c.connect("127.0.0.1", port)
        c.loop_start()
        return got.get(timeout=5)
    except (OSError, queue.Empty) as exc:
        return f"failed: {type(exc).__name__}"
    finally:
        c.disconnect()
        c.loop_stop()


def test_a_provisioned_device_logs_in_with_its_agent_config_and_nobody_else_does(fleet):
    from edgeops.fleet.keys import load_key
    from edgeops.fleet.provision import check_password, load_registry
    from edgeops.mqtt import MqttClient
    from edgeops_agent.config import load_config
    from edgeops_agent.mqtt import MqttLink

    out = json.loads(
        fleet.provision("pi-07", "--tags", "lab,floor-2", "--hardware", "rpi4", "--json").output
    )
    assert (out["device"], out["fleet"], out["username"], out["rotated"]) == (
        "pi-07", "lab", "pi-07", False,
    )  # fmt: skip
    written = fleet.configure()
    assert written["devices"] == ["pi-07"]
    assert written["services"] == ["collector-1", "server"]
    fleet.start()

    # the agent's own config loader reads what provisioning wrote
    path = fleet.agent_toml("pi-07")
    assert path.stat().st_mode & 0o777 == 0o600
    cfg = load_config(path)
    key = load_key(fleet.ws / ".edgeops" / "keys")
    assert (cfg.device, cfg.fleet, cfg.username, cfg.broker) == ("pi-07", "lab", "pi-07", fleet.url)
    assert cfg.public_keys == (key.public,)
    assert (cfg.tags, cfg.hardware) == (("lab", "floor-2"), "rpi4")
    assert cfg.ca_file == path.parent / "ca.pem"
    assert len(cfg.password) == 32

    # the workspace keeps the hash only, and the broker's password file has that hash
    keys = fleet.ws / ".edgeops" / "keys"
    registry_text = (keys / "identities.json").read_text()
    assert cfg.password not in registry_text
    assert (keys / "identities.json").stat().st_mode & 0o777 == 0o600
    stored = load_registry(keys)["devices"]["pi-07"]["password_hash"]
    assert check_password(cfg.password, stored) and not check_password("x" + cfg.password, stored)
    passwd = (fleet.conf_dir / "devices.passwd").read_text()
    assert passwd == f"pi-07:{stored}\n"
    assert (fleet.conf_dir / "devices.passwd").stat().st_mode & 0o777 == 0o600

    # the server account (on the service listener) hears what the real agent link publishes
    server = MqttClient(fleet.credentials["server"], client_id="test-server").connect()
    try:
        server.subscribe("edgeops/lab/devices/+/telemetry")
        server.wait_subscribed()
        connected = threading.Event()
        link = MqttLink(
            cfg,
            will=("edgeops/lab/devices/pi-07/state", b'{"online": false}'),
            on_message=lambda t, p: None,
            on_connect=connected.set,
            on_disconnect=lambda: None,
        )
        link.start()
        try:
            assert connected.wait(10), (fleet.run_dir / "mosquitto.log").read_text()[-2000:]
            assert link.publish("edgeops/lab/devices/pi-07/telemetry", b"window-1")
            got = [(m.topic, m.payload) for m in server.drain(1.0)]
        finally:
            link.stop()
    finally:
        server.close()
    assert got == [("edgeops/lab/devices/pi-07/telemetry", b"window-1")]

    # the server's MqttClient speaks TLS with the fleet CA (?ca_file=) as a device would
    ca = fleet.conf_dir / "ca.pem"
    url = f"mqtts://pi-07:{cfg.password}@127.0.0.1:{fleet.port}?ca_file={ca}"
    MqttClient(url, client_id="pi-07").connect().close()

    # and nobody else gets in
    port, service = fleet.port, fleet.service_port
    server_pw = fleet.credentials["server"].split(":")[2].split("@")[0]
    assert login(port, ca, "pi-07", cfg.password) == "Success"
    assert login(port, ca, "pi-07", cfg.password[:-1] + "?") == "Not authorized"
    assert login(port, ca, None, None) == "Not authorized"  # anonymous
    assert login(port, ca, "pi-08", cfg.password) == "Not authorized"  # unknown user
    assert login(port, ca, "server", server_pw) == "Not authorized"  # services: own listener
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe")
    answers: queue.Queue[str] = queue.Queue()
    plain.on_connect = lambda _c, _u, _f, rc, _p: answers.put(str(rc))
    plain.username_pw_set("pi-07", cfg.password)  # a device on the service listener
    plain.connect("127.0.0.1", service)
    plain.loop_start()
    try:
        assert answers.get(timeout=5) == "Not authorized"
    finally:
        plain.disconnect()
        plain.loop_stop()


def test_provisioning_again_needs_force_and_the_old_password_stops_working(fleet):
    fleet.provision("pi-07")
    first = fleet.password("pi-07")
    fleet.configure()
    fleet.start()
    ca = fleet.conf_dir / "ca.pem"
    assert login(fleet.port, ca, "pi-07", first) == "Success"

    refused = fleet.provision("pi-07", code=4)
    assert "already provisioned" in refused.output and "--force" in refused.output
    assert fleet.password("pi-07") == first  # nothing was rewritten

    again = json.loads(fleet.provision("pi-07", "--force", "--json").output)
    assert again["rotated"] is True
    second = fleet.password("pi-07")
    assert second != first
    rewritten = fleet.configure()
    assert rewritten["created"] == []  # service accounts keep their passwords
    kept = json.loads((fleet.conf_dir / "service-credentials.json").read_text())
    assert [a["username"] for a in kept["accounts"]] == ["server", "collector-1"]
    fleet.reload()
    assert login(fleet.port, ca, "pi-07", first) == "Not authorized"
    assert login(fleet.port, ca, "pi-07", second) == "Success"

    registry = json.loads((fleet.ws / ".edgeops/keys/identities.json").read_text())
    assert registry["devices"]["pi-07"]["rotations"] == 1


def test_client_certificates_are_required_with_client_certs(fleet):
    fleet.provision("pi-07", "--cert")
    fleet.provision("pi-08")
    fleet.configure("--client-certs")
    fleet.start()
    ca = fleet.conf_dir / "ca.pem"
    folder = fleet.agent_toml("pi-07").parent
    cert = (folder / "device.pem", folder / "device.key")
    assert (folder / "device.key").stat().st_mode & 0o777 == 0o600
    pw = fleet.password("pi-07")
    assert login(fleet.port, ca, "pi-07", pw, cert=cert) == "Success"
    assert login(fleet.port, ca, "pi-07", "wrong", cert=cert) == "Not authorized"
    assert login(fleet.port, ca, "pi-07", pw) != "Success"  # no certificate
    assert login(fleet.port, ca, "pi-08", fleet.password("pi-08")) != "Success"
    conf = (fleet.conf_dir / "mosquitto.conf").read_text()
    assert "require_certificate true" in conf and "use_username_as_clientid true" in conf


def test_device_ids_are_checked_and_service_names_reserved(fleet):
    assert "not valid" in fleet.provision("pi/07", code=2).output
    assert "not valid" in fleet.provision("pi+", code=2).output
    assert "reserved" in fleet.provision("server", code=2).output
    assert "reserved" in fleet.provision("collector-3", code=2).output
    assert not (fleet.ws / ".edgeops/keys/identities.json").exists()


def test_the_password_hash_is_the_one_mosquitto_passwd_writes(tmp_path):
    from edgeops.fleet.provision import check_password, hash_password

    tool = "/usr/bin/mosquitto_passwd"
    if not Path(tool).exists():
        _mosquitto_or_skip()
        pytest.skip("mosquitto_passwd is not installed")
    path = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(path), "alice", "s3cret"], check=True)
    hashed = path.read_text().strip().split(":", 1)[1]
    assert hashed.startswith("$7$101$")
    assert check_password("s3cret", hashed) and not check_password("s3cret!", hashed)
    salt = __import__("base64").b64decode(hashed.split("$")[3])
    assert hash_password("s3cret", salt=salt, iterations=101) == hashed


def test_the_acl_gives_each_account_exactly_its_topics():
    from edgeops.broker_config import render_acl

    acl = render_acl("lab", ["pi-2", "pi-1"], ["server"], ["collector-1"])
    rules = [ln for ln in acl.splitlines() if ln and not ln.startswith("#")]
    assert rules == [
        "pattern write edgeops/lab/devices/%u/state",
        "pattern write edgeops/lab/devices/%u/events",
        "pattern write edgeops/lab/devices/%u/telemetry",
        "pattern write edgeops/lab/devices/%u/samples",
        "pattern write edgeops/lab/devices/%u/labels",
        "pattern read edgeops/lab/devices/%u/desired",
        "pattern read edgeops/lab/devices/%u/ack",
        "user server",
        "topic readwrite edgeops/lab/#",
        "user collector-1",
        "topic read edgeops/lab/devices/+/state",
        "topic read edgeops/lab/devices/+/events",
        "topic read edgeops/lab/devices/+/telemetry",
        "topic read edgeops/lab/devices/+/samples",
        "topic read edgeops/lab/devices/+/labels",
        "topic write edgeops/lab/devices/+/ack",
        "user pi-1",
        "topic read edgeops/lab/artifacts/+/+",
        "topic read edgeops/lab/keys",
        "user pi-2",
        "topic read edgeops/lab/artifacts/+/+",
        "topic read edgeops/lab/keys",
    ]


def test_broker_config_needs_tls(fleet):
    result = _cli(fleet.ws, "broker", "config", "--out", str(fleet.conf_dir), code=2)
    assert "needs TLS" in result.output
    assert not fleet.conf_dir.exists()
