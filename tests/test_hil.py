"""The hardware-in-the-loop harness (hil/, docs/hil.md).

* Namespace mode end to end: ``hil/run`` on a targets file with two simulated devices (one
  on a clean link, one on a lossy one) runs both scenarios and leaves no namespace behind.
  Needs root; skipped elsewhere, but it fails in CI (``CI`` set).
* SSH mode end to end without a network: a fake ``ssh`` on ``PATH`` checks its arguments the
  way the harness builds them and runs the remote command with ``sh -c`` in a temporary
  "device home". Everything the harness does to a device (make its folder, copy the agent,
  write the config, start it with nohup, probe it, predict, fetch the log, uninstall) goes
  through it, and the agent it starts is the copy the harness sent.
* The pure parts: the targets file, the commands built for SSH targets (systemd-run, venv).
"""

from __future__ import annotations

import doctest
import importlib
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hil.bundle import Bundle  # noqa: E402
from hil.errors import HilError  # noqa: E402
from hil.hosts import SshHost  # noqa: E402
from hil.targets import KEYS, SshTarget, load_targets, parse_targets  # noqa: E402
from hil.testing import require_mosquitto, require_namespaces, run_namespaces  # noqa: E402

RUN = REPO / "hil" / "run"

FAKE_SSH = """#!{python}
# A stand-in for ssh: checks the options the harness gives, then runs the remote command
# with sh -c in $FAKE_SSH_HOME (the device's home), passing stdin and the exit status.
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_SSH_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
takes_value = set("bcDEeFIiJLlmOopQRSWw")
opts, i = {{}}, 0
while i < len(args) and args[i].startswith("-") and args[i] != "--":
    flag = args[i][1]
    if flag in takes_value and len(args[i]) == 2:
        opts.setdefault(flag, []).append(args[i + 1])
        i += 2
    else:
        i += 1
dest, rest = args[i], args[i + 1:]
if rest[:1] == ["--"]:
    rest = rest[1:]
if "BatchMode=yes" not in opts.get("o", []):
    sys.exit("fake ssh: the harness must never prompt (BatchMode=yes)")
for key in opts.get("i", []):
    if not os.path.isfile(key):
        sys.exit(f"fake ssh: no identity file {{key}}")
if len(rest) != 1:
    sys.exit("fake ssh: expected the remote command as one argument")
home = os.environ["FAKE_SSH_HOME"]
os.makedirs(home, exist_ok=True)
env = {{**os.environ, "HOME": home}}
sys.exit(subprocess.run(["sh", "-c", rest[0]], cwd=home, env=env).returncode)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    """``ssh`` on PATH is the fake; the device's home and the log of calls are returned."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "ssh"
    script.write_text(FAKE_SSH.format(python=sys.executable))
    script.chmod(0o755)
    home, log = tmp_path / "device-home", tmp_path / "ssh-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_HOME", str(home))
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key: the fake ssh only checks that it exists\n")
    return {"home": home, "log": log, "key": key}


def _run_hil(targets: Path, out: Path, *extra: str, timeout: float = 300):
    env = {**os.environ}
    for var in ("EDGEOPS_HOME", "EDGEOPS_DB_URL", "EDGEOPS_ARTIFACTS", "EDGEOPS_FLEET"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, str(RUN), str(targets), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def _verdicts(report: dict) -> dict[tuple[str, str], bool]:
    return {(s["name"], t["name"]): t["ok"] for s in report["scenarios"] for t in s["targets"]}


@pytest.mark.slow
def test_hil_run_on_two_namespace_targets(tmp_path):
    require_namespaces()
    require_mosquitto()
    targets = tmp_path / "targets.toml"
    targets.write_text(
        "[campaign]\npredictions = 100\nwindow = 20\n\n"
        '[[target]]\nname = "sim-clean"\nkind = "netns"\n\n'
        '[[target]]\nname = "sim-lossy"\nkind = "netns"\n'
        "netem = {loss = 10, delay_ms = 30, jitter_ms = 10, reorder = 25}\n"
    )
    proc, report = _run_hil(targets, tmp_path / "results.json", "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report is not None and report["ok"] and report["format"] == 1
    assert _verdicts(report) == {
        (s, t): True for s in ("rollout", "telemetry") for t in ("sim-clean", "sim-lossy")
    }
    tele = next(s for s in report["scenarios"] if s["name"] == "telemetry")
    assert tele["figures"]["sent"] == tele["figures"]["stored"] == 2 * 100 // 20
    assert tele["figures"]["missing"] == tele["figures"]["duplicates"] == 0
    lossy = next(t for t in report["targets"] if t["name"] == "sim-lossy")
    assert lossy["impairment"]["loss"] == 10
    if lossy["wire"] is not None:  # the userspace link (no sch_netem) counts what it lost
        assert sum(d["lost"] for d in lossy["wire"].values()) > 0
    assert "telemetry  sim-lossy" in proc.stdout and "campaign passed" in proc.stdout
    assert (tmp_path / "w" / "logs" / "sim-lossy.log").read_text().count("activated") >= 1
    assert run_namespaces(report["run"]) == []
    print(f"\nhil/run, 2 namespace targets: {tele['summary']}; campaign {report['seconds']} s")


@pytest.mark.slow
def test_hil_run_over_ssh_with_a_fake_ssh(tmp_path, fake_ssh):
    require_mosquitto()
    port = _free_port()
    targets = tmp_path / "targets.toml"
    targets.write_text(
        "[campaign]\npredictions = 50\nwindow = 10\n\n"
        '[broker]\nlisten = "127.0.0.1"\nadvertise = "127.0.0.1"\n\n'
        f'[[target]]\nname = "pi-1"\nkind = "ssh"\nhost = "pi-1.example"\nuser = "pi"\n'
        f'key = "{fake_ssh["key"]}"\nport = 2222\npython = "{sys.executable}"\n'
        f'install = "source"\nstart = "nohup"\nworkdir = "edgeops-hil"\nhttp_port = {port}\n'
    )
    out = tmp_path / "results.json"
    proc, report = _run_hil(targets, out, "--workdir", str(tmp_path / "w"), "--uninstall")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report is not None and report["ok"]
    assert _verdicts(report) == {("rollout", "pi-1"): True, ("telemetry", "pi-1"): True}
    facts = report["targets"][0]["facts"]
    device_dir = fake_ssh["home"] / "edgeops-hil"
    # the agent that ran is the copy the harness sent, not this machine's installation
    assert facts["agent"].endswith(str(device_dir / "src" / "edgeops_agent" / "__init__.py"))
    assert facts["workdir"] == str(device_dir) and facts["install"] == "source"
    calls = [json.loads(line) for line in fake_ssh["log"].read_text().splitlines()]
    for argv in calls:  # every call: no prompt, the key, the port, the login, one command
        assert argv[argv.index("-i") + 1] == str(fake_ssh["key"])
        assert argv[argv.index("-p") + 1] == "2222"
        assert argv[-3:-1] == ["pi@pi-1.example", "--"]
    commands = [shlex.split(argv[-1]) for argv in calls]
    assert any(c[:2] == ["sh", "-c"] and "nohup" in c[2] for c in commands)
    assert any(c[:2] == [sys.executable, "-c"] and c[3:4] == ["predict"] for c in commands)
    log = (tmp_path / "w" / "logs" / "pi-1.log").read_text()
    assert "activated hil-har" in log
    assert not device_dir.exists()  # --uninstall removed the folder (it held the marker)
    print(f"\nhil/run over a fake ssh: {len(calls)} ssh calls; {report['scenarios'][1]['summary']}")


@pytest.mark.slow
def test_a_venv_install_goes_through_ssh(tmp_path, fake_ssh):
    """install = "venv": the wheel built here, a venv on the device, pip install from the
    copied wheel (no index here: --no-deps --no-index), the agent importable from the venv."""
    spec = SshTarget(
        name="pi-2",
        host="pi-2.example",
        key=str(fake_ssh["key"]),
        python=sys.executable,
        install="venv",
        pip_args=("--no-deps", "--no-index"),
        workdir="agents/pi-2",
    )
    host = SshHost(spec)
    host.prepare(Bundle(tmp_path / "bundle"))
    venv = fake_ssh["home"] / "agents" / "pi-2" / "venv"
    assert host.agent_python == f"{venv}/bin/python"
    assert str(venv) in host.facts["agent"] and "site-packages/edgeops_agent" in host.facts["agent"]
    host.uninstall()
    assert not venv.exists()


def test_ssh_commands_for_systemd_and_sudo():
    host = SshHost(
        SshTarget(
            name="pi-3",
            host="10.0.0.7",
            user="pi",
            start="systemd-run",
            sudo=True,
            install="source",
            ssh_options=("-o", "ProxyJump=gw"),
        )
    )
    host.dir = "/home/pi/edgeops-hil"
    assert host.start_argv() == [
        "sudo",
        "-n",
        "systemd-run",
        "--unit=edgeops-hil-pi-3",
        "--collect",
        "--quiet",
        "--working-directory=/home/pi/edgeops-hil",
        "--setenv=PYTHONPATH=/home/pi/edgeops-hil/src",
        "python3",
        "-m",
        "edgeops_agent",
        "run",
        "--config",
        "/home/pi/edgeops-hil/agent.toml",
    ]
    assert host.stop_argv() == ["sudo", "-n", "systemctl", "stop", "edgeops-hil-pi-3"]
    assert host.logs_argv()[:3] == ["sudo", "-n", "journalctl"]
    user_unit = SshHost(SshTarget(name="pi-5", host="pi-5", start="systemd-run"))
    assert user_unit.start_argv()[:2] == ["systemd-run", "--user"]  # no sudo: the login's own
    assert user_unit.stop_argv() == ["systemctl", "--user", "stop", "edgeops-hil-pi-5"]
    argv = host.ssh_argv(["cat", "/home/pi/it's here"])
    assert argv[0] == "ssh" and argv[-3:-1] == ["pi@10.0.0.7", "--"]
    assert argv[argv.index("ProxyJump=gw") - 1] == "-o"
    assert shlex.split(argv[-1]) == ["cat", "/home/pi/it's here"]  # quoted for the remote shell
    venv = SshHost(SshTarget(name="pi-4", host="pi-4", extras=("onnx", "litert")))
    venv.dir = "/opt/x"
    steps = venv.install_argvs("edgeops_agent-0.1.0-py3-none-any.whl")
    assert steps[0] == ["python3", "-m", "venv", "/opt/x/venv"]
    assert steps[-1][-1] == "/opt/x/edgeops_agent-0.1.0-py3-none-any.whl[onnx,litert]"


def test_the_example_targets_file_is_valid_and_every_key_is_documented():
    spec = load_targets(REPO / "hil" / "targets.example.toml")
    assert {t.kind for t in spec.targets} == {"ssh", "netns"}
    docs = (REPO / "docs" / "hil.md").read_text()
    missing = sorted({k for keys in KEYS.values() for k in keys if f"`{k}`" not in docs})
    assert not missing, f"docs/hil.md does not describe {missing}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[target]]\nname = "a"\nkind = "usb"\n', "kind must be"),
        ('[[target]]\nname = "a b"\nkind = "netns"\n', "target name"),
        ('[[target]]\nname = "a"\nkind = "netns"\ncolour = 1\n', "unknown key target[0].colour"),
        ('[[target]]\nname = "a"\nkind = "netns"\nnetem = {loss = 120}\n', "per cent"),
        ('[[target]]\nname = "a"\nkind = "netns"\nnetem = {reorder = 5}\n', "needs a delay"),
        ('[[target]]\nname = "a"\nkind = "ssh"\nhost = "h"\nworkdir = "~"\n', "folder of its own"),
        ('[[target]]\nname = "a"\nkind = "ssh"\nhost = "h"\ninstall = "apt"\n', "install must"),
        ('[campaign]\npredictions = 55\n[[target]]\nname = "a"\nkind = "netns"\n', "multiple"),
        ('[broker]\nurl = "mqtt://b:1883"\n[[target]]\nname = "a"\nkind = "netns"\n', "netns"),
        ("[campaign]\n", "no [[target]]"),
        (
            '[[target]]\nname = "a"\nkind = "netns"\n[[target]]\nname = "a"\nkind = "netns"\n',
            "used twice",
        ),
    ],
)
def test_bad_targets_files_are_refused_with_a_reason(text, message):
    with pytest.raises(HilError) as info:
        parse_targets(text)
    assert message in str(info.value)


def test_a_bad_targets_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "t.toml"
    bad.write_text('[[target]]\nname = "a"\nkind = "usb"\n')
    proc = subprocess.run([sys.executable, str(RUN), str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "kind must be" in proc.stderr


@pytest.mark.parametrize("name", ["hil.impair", "hil.targets"])
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
