"""Simulated devices' networks: one Linux network namespace per device, linked to this
machine's namespace, with an optional impairment on the link.

Each device gets namespace ``hil-<pid>-<token>-<i>`` (the harness's pid, so a later
run can tell leftovers of a dead run from a live one) and a point-to-point link to
the root namespace, where the broker listens on the link's host address:

* ``veth``: a veth pair; an impairment is ``tc qdisc add dev ... root netem`` on
  both ends (each direction), which needs a kernel with ``sch_netem``;
* ``wire``: two TUN interfaces joined by :mod:`hil.wire`, a userspace netem (the
  same loss, delay, jitter and reorder figures), for kernels without ``sch_netem``;
* ``auto`` (default): ``veth`` when there is no impairment or the kernel has netem,
  else ``wire``.

Addresses: one /24 per run in ``10.200.0.0``-``10.254.255.0`` that no interface
uses yet; device ``i`` has ``.4i+1`` (host side) and ``.4i+2`` (device side).

Everything here calls ``ip`` and ``tc`` (iproute2) and needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hil.errors import HilError
from hil.impair import Impairment

__all__ = ["LINK_KINDS", "Link", "Network", "cleanup_stale", "namespaces_available"]

LINK_KINDS = ("auto", "veth", "wire")
_PREFIX = "hil-"
_NAME = re.compile(r"^hil-(\d+)-([0-9a-f]+)-(\w+)$")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        raise HilError("`ip` is not installed; apt-get install iproute2") from exc
    if check and proc.returncode != 0:
        raise HilError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def _tc(namespace: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["tc", *(["-n", namespace] if namespace else []), *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        raise HilError("`tc` is not installed; apt-get install iproute2") from exc


def namespaces_available() -> tuple[bool, str]:
    """Whether this process may create network namespaces; and why not."""
    if sys.platform != "linux":
        return False, "network namespaces need Linux"
    name = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(3)}-probe"
    try:
        proc = _ip("netns", "add", name, check=False)
    except HilError as exc:
        return False, str(exc)
    if proc.returncode != 0:
        return False, f"`ip netns add` failed (root/CAP_NET_ADMIN needed): {proc.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return True, ""


def netem_available() -> bool:
    """Whether the kernel has the netem qdisc (tried on a throwaway namespace's loopback)."""
    name = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(3)}-netem"
    _ip("netns", "add", name)
    try:
        proc = _tc(name, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms")
        return proc.returncode == 0
    except HilError:  # no tc: no netem either (the userspace link needs neither)
        return False
    finally:
        _ip("netns", "del", name, check=False)


def _kill_namespace_processes(name: str) -> None:
    """End the processes left in namespace ``name`` (ours: the agents we started in it)."""
    proc = _ip("netns", "pids", name, check=False)
    pids = [int(p) for p in proc.stdout.split() if p.isdigit()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.05)
        if not pids:
            return


def delete_namespace(name: str) -> None:
    _kill_namespace_processes(name)
    _ip("netns", "del", name, check=False)


def cleanup_stale() -> list[str]:
    """Delete the namespaces of harness runs whose process is gone; their names."""
    proc = _ip("netns", "list", check=False)
    gone = []
    for line in proc.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME.match(name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            delete_namespace(name)
            gone.append(name)
    return gone


def _used_subnets() -> set[tuple[int, int]]:
    out = _ip("-o", "-4", "addr", "show", check=False).stdout
    used = set()
    for a, b in re.findall(r"inet 10\.(\d+)\.(\d+)\.\d+", out):
        used.add((int(a), int(b)))
    return used


@dataclass
class Link:
    """One device's namespace and its link to the root namespace."""

    namespace: str
    kind: str  # "veth" or "wire"
    host_if: str
    dev_if: str
    host_addr: str
    dev_addr: str
    impairment: Impairment
    stats_file: Path | None = None
    wire: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def wire_stats(self) -> dict[str, dict[str, int]] | None:
        """Per direction, what the userspace link did (``wire`` links only)."""
        if self.stats_file is None:
            return None
        try:
            return json.loads(self.stats_file.read_text())["directions"]
        except (OSError, ValueError, KeyError):
            return None

    def set_outage(self, on: bool) -> None:
        """Start (or end) an outage: the link loses every packet, both ways."""
        if self.wire is not None:
            self.wire.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)
        elif not self.impairment.none:  # veth + netem: everything lost, then the figures again
            args = ["loss", "100%"] if on else self.impairment.netem_args()
            for where, dev in ((None, self.host_if), (self.namespace, self.dev_if)):
                _tc(where, "qdisc", "change", "dev", dev, "root", "netem", *args)
        else:
            state = "down" if on else "up"
            _ip("link", "set", self.host_if, state)
            _ip("-n", self.namespace, "link", "set", self.dev_if, state)

    def describe(self) -> str:
        how = {"veth": "veth + tc netem" if not self.impairment.none else "veth"}.get(
            self.kind, "TUN + userspace netem (hil.wire)"
        )
        return f"{how}: {self.impairment.describe()}"


class Network:
    """The namespaces and links of one harness run; :meth:`close` removes them all."""

    def __init__(self, workdir: Path, token: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.token = token or secrets.token_hex(3)
        self.links: list[Link] = []
        self._netem: bool | None = None
        self._subnet: tuple[int, int] | None = None
        cleanup_stale()

    def _base(self) -> tuple[int, int]:
        if self._subnet is None:
            used = _used_subnets()
            start = int(self.token, 16)
            for k in range(55 * 256):
                n = (start + k) % (55 * 256)
                candidate = (200 + n // 256, n % 256)
                if candidate not in used:
                    self._subnet = candidate
                    break
            else:
                raise HilError("no free 10.x.y.0/24 for the simulated devices' links")
        return self._subnet

    def _choose(self, kind: str, imp: Impairment) -> str:
        if kind not in LINK_KINDS:
            raise HilError(f"unknown link {kind!r}; use one of {', '.join(LINK_KINDS)}")
        if imp.none:
            return "veth" if kind == "auto" else kind
        if kind in ("auto", "veth") and self._netem is None:
            self._netem = netem_available()
        if kind == "veth" and not self._netem:
            raise HilError(
                "link = 'veth' with netem, but this kernel has no sch_netem; "
                "use link = 'wire' (userspace netem) or 'auto'"
            )
        return "veth" if kind == "veth" or (kind == "auto" and self._netem) else "wire"

    def add(self, impairment: Impairment, kind: str = "auto", seed: int = 0) -> Link:
        """A namespace with a link for the next device."""
        i = len(self.links)
        if i >= 63:
            raise HilError("at most 63 simulated devices per run")
        a, b = self._base()
        host_addr, dev_addr = f"10.{a}.{b}.{4 * i + 1}", f"10.{a}.{b}.{4 * i + 2}"
        chosen = self._choose(kind, impairment)
        ns = f"{_PREFIX}{os.getpid()}-{self.token}-{i}"
        link = Link(
            ns,
            chosen,
            f"eo{self.token}{i}h",
            f"eo{self.token}{i}d",
            host_addr,
            dev_addr,
            impairment,
        )
        self.links.append(link)  # from here on close() removes it, whatever fails next
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        if chosen == "veth":
            self._veth(link)
        else:
            self._wire(link, seed)
        return link

    def _veth(self, link: Link) -> None:
        ns = link.namespace
        _ip("link", "add", link.host_if, "type", "veth", "peer", "name", link.dev_if)
        _ip("link", "set", link.dev_if, "netns", ns)
        _ip("addr", "add", f"{link.host_addr}/30", "dev", link.host_if)
        _ip("link", "set", link.host_if, "up")
        _ip("-n", ns, "addr", "add", f"{link.dev_addr}/30", "dev", link.dev_if)
        _ip("-n", ns, "link", "set", link.dev_if, "up")
        if not link.impairment.none:
            args = ["qdisc", "add", "dev"]
            for where, dev in ((None, link.host_if), (ns, link.dev_if)):
                proc = _tc(where, *args, dev, "root", "netem", *link.impairment.netem_args())
                if proc.returncode != 0:
                    raise HilError(f"tc netem on {dev}: {proc.stderr.strip()}")

    def _wire(self, link: Link, seed: int) -> None:
        imp = link.impairment
        link.stats_file = self.workdir / f"wire-{link.namespace}.json"
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "hil.wire",
            "--host-if",
            link.host_if,
            "--dev-if",
            link.dev_if,
            "--loss",
            str(imp.loss),
            "--delay-ms",
            str(imp.delay_ms),
            "--jitter-ms",
            str(imp.jitter_ms),
            "--reorder",
            str(imp.reorder),
            "--seed",
            str(seed),
            "--stats",
            str(link.stats_file),
        ]
        root = str(Path(__file__).resolve().parent.parent)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        log = self.workdir / f"wire-{link.namespace}.log"
        with open(log, "ab") as err:
            link.wire = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env
            )
        line = link.wire.stdout.readline() if link.wire.stdout else b""
        if line.strip() != b"ready":  # it printed why and exited
            link.wire.wait(timeout=10)
            why = log.read_text(errors="replace").strip()[-400:]
            raise HilError(f"the userspace link did not start: {why or line!r}")
        ns = link.namespace
        _ip("link", "set", link.dev_if, "netns", ns)
        _ip("addr", "add", link.host_addr, "peer", link.dev_addr, "dev", link.host_if)
        _ip("link", "set", link.host_if, "up")
        _ip("-n", ns, "addr", "add", link.dev_addr, "peer", link.host_addr, "dev", link.dev_if)
        _ip("-n", ns, "link", "set", link.dev_if, "up")

    def close(self) -> None:
        """Remove every namespace and link of this run (processes in them are ended)."""
        for link in reversed(self.links):
            delete_namespace(link.namespace)
            if link.wire is not None:
                if link.wire.poll() is None:
                    link.wire.terminate()
                    try:
                        link.wire.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        link.wire.kill()
                        link.wire.wait()
                if link.wire.stdout is not None:
                    link.wire.stdout.close()
            if link.kind == "veth":  # normally gone with the namespace
                _ip("link", "del", link.host_if, check=False)
        self.links.clear()
