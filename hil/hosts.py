"""Where an agent runs: a network namespace of this machine, or a device over SSH.

Both kinds of :class:`Host` do the same few things — install the agent, write a file
next to it, start and stop it, run :mod:`hil.probe` beside it, fetch its log,
uninstall — so every scenario is written once, against :class:`Host`.

* :class:`NetnsHost` runs ``ip netns exec NS <this Python> -m edgeops_agent run``:
  the agent installed here, its folder here, its network the namespace's.
* :class:`SshHost` turns each step into one ``ssh`` command (``BatchMode``, the
  target's key, port and options) whose remote command is a ``shlex``-quoted
  argument list, so nothing in a path or value is interpreted by the remote shell
  except the few fixed ``sh -c`` scripts below, which take their values as ``$1``...
  Files go over the same connection (``cat > file`` on the device), so the device
  needs nothing but ``sh``, ``cat``, ``tar`` and Python 3.9+.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from hil.bundle import Bundle
from hil.errors import HilError
from hil.netns import Link
from hil.targets import NetnsTarget, SshTarget

__all__ = ["PROBE", "Host", "NetnsHost", "SshHost"]

PROBE = (Path(__file__).resolve().parent / "probe.py").read_text()
MARKER = ".edgeops-hil"  # in every folder the harness made on a device; uninstall needs it

_START_NOHUP = (
    'cd "$1" || exit 1; shift; nohup "$@" > agent.log 2>&1 < /dev/null & echo $! > agent.pid'
)
_STOP_NOHUP = (
    'cd "$1" || exit 0; [ -f agent.pid ] || exit 0; pid=$(cat agent.pid); '
    'kill -TERM "$pid" 2>/dev/null || { rm -f agent.pid; exit 0; }; i=0; '
    'while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; '
    'kill -KILL "$pid" 2>/dev/null; rm -f agent.pid; exit 0'
)
_MAKE_DIR = 'mkdir -p "$1" && cd "$1" && touch ' + MARKER + " && pwd"
_UNPACK = 'rm -rf "$1/src" && mkdir -p "$1/src" && tar -xzf "$1/agent-src.tar.gz" -C "$1/src"'
_REMOVE = 'test -f "$1/' + MARKER + '" && rm -rf "$1"'
_WRITE = 'mkdir -p "$(dirname "$1")" && cat > "$1"'


def _probe_result(proc: subprocess.CompletedProcess[bytes], where: str) -> dict[str, Any]:
    try:
        return json.loads(proc.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        err = proc.stderr.decode(errors="replace").strip()[-400:]
        why = f"the probe printed no result (exit {proc.returncode}): {err}"
        raise HilError(f"{where}: {why}") from exc


class Host(ABC):
    """One target, with its agent."""

    spec: NetnsTarget | SshTarget
    broker_url: str = ""  # the URL this target's agent connects to
    facts: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    @abstractmethod
    def state_dir(self) -> str:
        """The agent's state folder, as a path on the target."""

    @abstractmethod
    def prepare(self, bundle: Bundle) -> None:
        """Make the folder and install the agent; what was found goes into ``facts``."""

    @abstractmethod
    def write(self, name: str, data: bytes) -> None:
        """Write a file into the target's folder."""

    @abstractmethod
    def start_agent(self) -> None: ...

    @abstractmethod
    def stop_agent(self) -> None:
        """SIGTERM (the agent publishes its offline state), SIGKILL after 10 s."""

    @abstractmethod
    def _probe(self, args: list[str], stdin: bytes | None, timeout: float) -> dict[str, Any]: ...

    @abstractmethod
    def logs(self) -> str: ...

    def uninstall(self) -> None:  # noqa: B027 - optional: a namespace leaves nothing behind
        """Remove what the harness installed (SSH targets)."""

    def state(self) -> dict[str, Any]:
        """The agent's state and health from its HTTP endpoint, and its outbox."""
        return self._probe(["state", str(self.spec.http_port), self.state_dir], None, 30)

    def predict(self, rows: list[dict[str, Any]], n: int, batch: int) -> dict[str, Any]:
        args = ["predict", str(self.spec.http_port), str(n), str(batch)]
        return self._probe(args, json.dumps(rows).encode(), 60 + n)


class NetnsHost(Host):
    """The agent of this machine in namespace ``link.namespace``, its folder ``folder``."""

    def __init__(self, spec: NetnsTarget, link: Link, folder: Path) -> None:
        self.spec, self.link, self.folder = spec, link, Path(folder)
        self.proc: subprocess.Popen[bytes] | None = None
        self.facts = {}

    @property
    def state_dir(self) -> str:
        return str(self.folder / "state")

    def _in_ns(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.link.namespace, *argv]

    def prepare(self, bundle: Bundle) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        import edgeops_agent

        self.facts = {
            "python": sys.executable,
            "agent": f"edgeops-agent {edgeops_agent.__version__} (this machine's)",
            "namespace": self.link.namespace,
            "link": self.link.describe(),
            "address": self.link.dev_addr,
        }

    def write(self, name: str, data: bytes) -> None:
        (self.folder / name).write_bytes(data)

    def start_agent(self) -> None:
        cmd = [sys.executable, "-m", "edgeops_agent", "run", "--config", "agent.toml"]
        with open(self.folder / "agent.log", "ab") as log:
            self.proc = subprocess.Popen(
                self._in_ns(cmd),
                cwd=self.folder,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def stop_agent(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _probe(self, args: list[str], stdin: bytes | None, timeout: float) -> dict[str, Any]:
        cmd = self._in_ns([sys.executable, "-c", PROBE, *args])
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise HilError(f"{self.name}: the probe took more than {timeout:.0f}s") from exc
        return _probe_result(proc, self.name)

    def logs(self) -> str:
        try:
            return (self.folder / "agent.log").read_text(errors="replace")
        except OSError:
            return ""


class SshHost(Host):
    """A device over SSH; its folder is ``spec.workdir`` there (made absolute by
    :meth:`prepare`)."""

    def __init__(self, spec: SshTarget, ssh: str = "ssh") -> None:
        self.spec = spec
        self.ssh = ssh
        self.dir = spec.workdir
        self.facts = {}
        self._started = False

    # --- command construction (pure) -----------------------------------------------------
    def ssh_argv(self, argv: list[str]) -> list[str]:
        """The local command that runs ``argv`` on the device."""
        s = self.spec
        opts = [
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=15",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "ServerAliveInterval=15",
        ]
        if s.key:
            opts += ["-i", s.key, "-o", "IdentitiesOnly=yes"]
        return [
            self.ssh,
            *opts,
            "-p",
            str(s.port),
            *s.ssh_options,
            s.destination,
            "--",
            shlex.join(argv),
        ]

    @property
    def _sudo(self) -> list[str]:
        return ["sudo", "-n"] if self.spec.sudo else []

    def _systemd(self, tool: str) -> list[str]:
        """A system unit through ``sudo -n``, else the login's own (``--user``) manager."""
        return [*self._sudo, tool] if self.spec.sudo else [tool, "--user"]

    @property
    def unit(self) -> str:
        return f"edgeops-hil-{self.spec.name}"

    @property
    def agent_python(self) -> str:
        return f"{self.dir}/venv/bin/python" if self.spec.install == "venv" else self.spec.python

    @property
    def agent_env(self) -> list[str]:
        """``env PYTHONPATH=...`` when the agent runs from copied source."""
        return ["env", f"PYTHONPATH={self.dir}/src"] if self.spec.install == "source" else []

    def agent_argv(self) -> list[str]:
        return [
            self.agent_python,
            "-m",
            "edgeops_agent",
            "run",
            "--config",
            f"{self.dir}/agent.toml",
        ]

    def start_argv(self) -> list[str]:
        """The device-side command that starts the agent in the background."""
        if self.spec.start == "systemd-run":
            env = [f"--setenv=PYTHONPATH={self.dir}/src"] if self.spec.install == "source" else []
            return [
                *self._systemd("systemd-run"),
                f"--unit={self.unit}",
                "--collect",
                "--quiet",
                f"--working-directory={self.dir}",
                *env,
                *self.agent_argv(),
            ]
        return ["sh", "-c", _START_NOHUP, "sh", self.dir, *self.agent_env, *self.agent_argv()]

    def stop_argv(self) -> list[str]:
        if self.spec.start == "systemd-run":
            return [*self._systemd("systemctl"), "stop", self.unit]
        return ["sh", "-c", _STOP_NOHUP, "sh", self.dir]

    def logs_argv(self) -> list[str]:
        if self.spec.start == "systemd-run":
            return [
                *self._systemd("journalctl"),
                f"--unit={self.unit}",
                "--no-pager",
                "-o",
                "cat",
            ]
        return ["cat", f"{self.dir}/agent.log"]

    def install_argvs(self, wheel_name: str | None) -> list[list[str]]:
        """The device-side commands that install the agent (after the upload)."""
        s = self.spec
        if s.install == "source":
            return [["sh", "-c", _UNPACK, "sh", self.dir]]
        if s.install == "venv":
            assert wheel_name is not None
            extras = f"[{','.join(s.extras)}]" if s.extras else ""
            venv = [
                s.python,
                "-m",
                "venv",
                *(["--system-site-packages"] if s.system_site_packages else []),
                f"{self.dir}/venv",
            ]
            pip = [self.agent_python, "-m", "pip"]
            return [
                venv,
                [
                    "sh",
                    "-c",
                    '"$@" >/dev/null 2>&1; exit 0',
                    "sh",
                    *pip,
                    "uninstall",
                    "-y",
                    "edgeops-agent",
                ],
                [
                    *pip,
                    "install",
                    "--disable-pip-version-check",
                    *s.pip_args,
                    f"{self.dir}/{wheel_name}{extras}",
                ],
            ]
        return []

    # --- running -------------------------------------------------------------------------
    def run(
        self, argv: list[str], stdin: bytes | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        cmd = self.ssh_argv(argv)
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
        except FileNotFoundError as exc:
            why = f"{self.ssh!r} is not installed; apt-get install openssh-client"
            raise HilError(why) from exc
        except subprocess.TimeoutExpired as exc:
            raise HilError(f"{self.name}: `{argv[0]}` took more than {timeout:.0f}s") from exc
        if check and proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()[-600:] or "no message"
            what = shlex.join(argv)[:200]
            raise HilError(f"{self.name}: `{what}` failed (exit {proc.returncode}): {err}")
        return proc

    @property
    def state_dir(self) -> str:
        return f"{self.dir}/state"

    def prepare(self, bundle: Bundle) -> None:
        s = self.spec
        self.dir = self.run(["sh", "-c", _MAKE_DIR, "sh", s.workdir]).stdout.decode().strip()
        if not self.dir.startswith("/"):
            raise HilError(f"{self.name}: could not make {s.workdir} on the device")
        version = self.run([s.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        py = version.stdout.decode().strip()
        if tuple(int(x) for x in py.split(".")) < (3, 9):
            raise HilError(f"{self.name}: {s.python} is Python {py}; the agent needs 3.9+")
        wheel_name = None
        if s.install == "source":
            self.write("agent-src.tar.gz", bundle.tarball())
        elif s.install == "venv":
            wheel = bundle.wheel()
            wheel_name = wheel.name
            self.write(wheel_name, wheel.read_bytes())
        for argv in self.install_argvs(wheel_name):
            self.run(argv, timeout=1800)  # pip on a Pi, with onnxruntime, takes a while
        check = "import edgeops_agent; print(edgeops_agent.__version__, edgeops_agent.__file__)"
        found = self.run([*self.agent_env, self.agent_python, "-c", check]).stdout.decode().split()
        self.facts = {
            "python": f"{s.python} ({py})",
            "agent": f"edgeops-agent {found[0]} at {found[1]}" if len(found) == 2 else "?",
            "workdir": self.dir,
            "install": s.install,
            "start": s.start,
        }

    def write(self, name: str, data: bytes) -> None:
        self.run(["sh", "-c", _WRITE, "sh", f"{self.dir}/{name}"], stdin=data)

    def start_agent(self) -> None:
        if self.spec.start == "systemd-run":
            self.run([*self._systemd("systemctl"), "reset-failed", self.unit], check=False)
        self.run(self.start_argv())
        self._started = True

    def stop_agent(self) -> None:
        if self._started:
            self.run(self.stop_argv(), check=False, timeout=60)
            self._started = False

    def _probe(self, args: list[str], stdin: bytes | None, timeout: float) -> dict[str, Any]:
        proc = self.run(
            [self.spec.python, "-c", PROBE, *args], stdin=stdin, timeout=timeout, check=False
        )
        return _probe_result(proc, self.name)

    def logs(self) -> str:
        proc = self.run(self.logs_argv(), check=False, timeout=60)
        return proc.stdout.decode(errors="replace")

    def uninstall(self) -> None:
        self.stop_agent()
        self.run([*self._sudo, "sh", "-c", _REMOVE, "sh", self.dir], check=False, timeout=120)
