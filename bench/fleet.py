"""Fleet rollout benchmark: one stage to N simulated agents over Mosquitto, measured in one run.

Usage::

    python bench/fleet.py [--agents 200] [--quick] [--json OUT] [--check]
                          [--agent-processes 2] [--nodelay] [--verbose]

Everything runs on this machine, on loopback: the benchmark starts its own
Mosquitto on a free port, trains and registers a ~100 KB model through the
pipeline (``run_pipeline``: a Keras MLP on scikit-learn's digits, exported as
``tflite-int8``, which is what agents reporting ``ai-edge-litert`` are given),
and measures, one after the other:

* **(b) one agent alone**: a real :class:`~edgeops_agent.agent.Agent` on a fresh
  state directory is sent the signed manifest of that variant (chunks already
  retained); time from publishing it until its ``activated`` event arrives,
  split by the agent's own event and log timestamps, and the CPU time it used.
  Median of several runs, after one warm-up run.
* **(c) fan-out**: N plain paho subscribers on the artifact's chunk topics;
  time from publishing the chunks (``publish_artifact``, the controller's own
  call, same chunk size) until every subscriber holds every chunk.
* **(a) the rollout**: N agents (:class:`~edgeops_agent.sim.SimulatedFleet`),
  the real :class:`~edgeops.fleet.controller.RolloutController` with the real
  :class:`~edgeops.mqtt.MqttClient`, one stage; time from ``create`` until the
  controller records the rollout completed. Three times (once with ``--quick``),
  each with a new fleet; the median counts. Per-device times come from the
  fleet store (manifest saved, device event timestamps, when the controller
  recorded each event); the controller's time is split by wrapping its methods
  (the library is not changed).
* **the agent process**: ``python -m edgeops_agent run`` started for real: time
  from spawn until its retained online state reaches the broker, and its
  resident memory before any model and after a TFLite model is active (the
  interpreter loaded), with a breakdown by import in a bare interpreter and
  ``python -X importtime`` costs.

The agents and the subscribers run in ``--agent-processes`` child processes
(this script with ``--host``; default 2, one per core), the controller in this
one; ``--agent-processes 0`` runs everything in this process. Keep it at 250
agents or fewer per process: each agent holds four file descriptors, and paho's
network loop uses ``select()``, which cannot watch descriptors above 1023, so the
agents past that never connect. ``--nodelay`` is an experiment, not the product:
Mosquitto's ``set_tcp_nodelay`` and ``TCP_NODELAY`` on every client socket of the
run (set by the benchmark after each connects), to show what Nagle's algorithm
costs. The CPU time used by other processes on the machine during each rollout is
printed: other work skews every number here. Targets (from the issue), printed as
PASS or MISS:

* a / (N x b / cores + c) <= 1.5: orchestration and messaging over the work the
  devices cannot avoid;
* agent resident memory with ai-edge-litert and a model loaded <= 80 MiB.

Devices activated per minute are compared with AWS IoT Jobs' maximum rollout
rate of 1,000 devices per minute. The exit status is 0 whatever the numbers;
with ``--check`` it is 1 when a target is missed. ``--quick`` (50 agents, fewer
repetitions) is a smoke run. The workspace is a new temporary one (SQLite),
whatever ``EDGEOPS_DB_URL`` says. Results are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import json
import logging
import os
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import _report  # bench/_report.py
from _broker import Broker, start_broker  # bench/_broker.py; the script folder is on sys.path
from _report import stderr_to

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLEET = "bench"
TAG = "bench"
MODEL = "fleet-mlp"
TARGETS = {"overhead_ratio": 1.5, "agent_rss_mib": 80.0}
AWS_IOT_JOBS_PER_MINUTE = 1000
PIXELS = [f"px_{i:02d}" for i in range(64)]


@dataclass(frozen=True)
class Settings:
    quick: bool
    agents: int
    agent_processes: int
    solo_runs: int  # (b), after one warm-up run
    fanout_runs: int  # (c)
    startup_runs: int  # agent process start-ups, fresh and with a model
    rollouts: int  # (a), each with a new fleet
    epochs: int  # training does not change the model's size
    rollout_limit_s: float
    nodelay: bool = False  # TCP_NODELAY on every connection (an experiment, not the product)


def settings(quick: bool, agents: int | None, processes: int, nodelay: bool = False) -> Settings:
    if quick:
        return Settings(True, agents or 50, processes, 3, 2, 2, 1, 3, 60.0, nodelay)
    return Settings(False, agents or 200, processes, 7, 5, 7, 3, 10, 180.0, nodelay)


# -- pure: numbers ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated between the closest ranks.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    """
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def spread(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values, default=float("nan")),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": max(values, default=float("nan")),
    }


def overhead_ratio(a: float, b: float, c: float, n: int, cores: int) -> float:
    """``a / (n * b / cores + c)``: the rollout against the device work spread over the cores
    plus one fan-out of the artifact.

    >>> overhead_ratio(a=12.0, b=0.1, c=2.0, n=200, cores=2)
    1.0
    """
    return a / (n * b / cores + c)


def _epoch(value: datetime) -> float:
    """A stored UTC timestamp (SQLite gives it back without its time zone) as Unix seconds."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


# -- I/O helpers ------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile, Threads of a process (kB, or a count)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def set_nodelay(client: Any) -> None:
    """Turn off Nagle's algorithm on a connected paho client's socket (``--nodelay``)."""
    sock = client.socket()
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used so far (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _paho(client_id: str) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    return mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True
    )


def _wait(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


# Bytes only: Mosquitto 2.0's $SYS/broker/publish/messages/* leave out retained publishes.
SYS_COUNTERS = {
    "bytes_received": "$SYS/broker/bytes/received",
    "bytes_sent": "$SYS/broker/bytes/sent",
}


def broker_counters(url: str, timeout: float = 5.0) -> dict[str, int]:
    """Mosquitto's totals since it started (updated every second: read 1.2 s after a phase)."""
    host, port = url.rsplit("/", 1)[1].split(":")
    got: dict[str, int] = {}
    names = {v: k for k, v in SYS_COUNTERS.items()}
    client = _paho(f"bench-sys-{os.getpid()}-{time.monotonic_ns()}")
    client.on_message = lambda c, u, m: got.__setitem__(names[m.topic], int(m.payload))
    client.connect(host, int(port))
    client.loop_start()
    try:
        for topic in SYS_COUNTERS.values():
            client.subscribe(topic, 0)
        _wait(lambda: len(got) == len(SYS_COUNTERS), timeout, "the broker's $SYS counters")
    finally:
        client.disconnect()
        client.loop_stop()
    return got


class Observer:
    """A plain paho client that stamps every message it receives with the wall clock."""

    def __init__(self, url: str, filters: list[str], nodelay: bool = False) -> None:
        host, port = url.rsplit("/", 1)[1].split(":")
        self.seen: list[tuple[float, str, bytes]] = []
        self._cond = threading.Condition()
        self._acks = 0
        self.client = _paho(f"bench-observer-{os.getpid()}-{time.monotonic_ns()}")
        self.client.on_message = self._message
        self.client.on_subscribe = self._subscribed
        self.client.connect(host, int(port))
        if nodelay:
            set_nodelay(self.client)
        self.client.loop_start()
        for f in filters:
            self.client.subscribe(f, 1)
        _wait(lambda: self._acks == len(filters), 10, "the observer's subscriptions")

    def _subscribed(self, *args: Any) -> None:
        self._acks += 1

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.seen.append((time.time(), msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait_for(
        self, match: Callable[[str, dict[str, Any]], bool], since: float, timeout: float, what: str
    ) -> tuple[float, dict[str, Any]]:
        """The first message received after ``since`` whose topic and JSON match."""
        deadline = time.monotonic() + timeout
        checked = 0
        with self._cond:
            while True:
                for at, topic, payload in self.seen[checked:]:
                    if at >= since and payload:
                        doc = json.loads(payload)
                        if match(topic, doc):
                            return at, doc
                checked = len(self.seen)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
                self._cond.wait(left)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- hosts: where the agents and the plain subscribers run ---------------------------------


class _Marks(logging.Handler):
    """Timestamps of the agent's log lines (the health check has no event of its own)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.created, record.getMessage()))


class _Subscriber:
    """One plain paho subscriber: counts the distinct chunk indexes it has received."""

    def __init__(self, name: str, host: str, port: int, nodelay: bool) -> None:
        self.client = _paho(name)
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *a: setattr(self, "acked", True)
        self.client.on_connect = lambda *a: self._connected(nodelay)
        self.connected = self.acked = False
        self.expected, self.indexes, self.done_at = 0, set(), None
        self.client.connect_async(host, port)
        self.client.loop_start()

    def _connected(self, nodelay: bool) -> None:
        if nodelay:
            set_nodelay(self.client)
        self.connected = True

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.indexes.add(msg.topic.rsplit("/", 1)[1])
        if self.done_at is None and len(self.indexes) >= self.expected:
            self.done_at = time.time()

    def subscribe(self, topic_filter: str, expected: int) -> None:
        self.expected, self.indexes, self.done_at, self.acked = expected, set(), None, False
        self.client.subscribe(topic_filter, 1)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class HostWork:
    """What one host does on request; every method returns plain JSON values."""

    def __init__(self) -> None:
        self.fleet: Any = None
        self.solo: Any = None
        self.marks: _Marks | None = None
        self.subs: list[_Subscriber] = []

    def fleet_start(
        self, n: int, prefix: str, config: dict, root: str, timeout: float, nodelay: bool
    ) -> dict:
        from edgeops_agent.config import AgentConfig
        from edgeops_agent.sim import SimulatedFleet

        t0 = time.perf_counter()
        self.fleet = SimulatedFleet(n, AgentConfig.from_dict(config), Path(root), prefix=prefix)
        self.fleet.start()
        agents = [self.fleet.agent(i) for i in range(n)]
        try:
            _wait(lambda: all(a.connected for a in agents), timeout, f"{n} agents", 0.05)
        except TimeoutError as exc:
            fds = [int(f) for f in os.listdir("/proc/self/fd")]
            kinds: dict[str, int] = {}
            for fd in fds:
                with contextlib.suppress(OSError):
                    kind = os.readlink(f"/proc/self/fd/{fd}").split(":")[0].split("/")[-1]
                    kinds[kind] = kinds.get(kind, 0) + 1
            top = sorted(kinds.items(), key=lambda x: -x[1])[:8]
            raise TimeoutError(
                f"{exc}: {sum(a.connected for a in agents)} connected; {len(fds)} open file "
                f"descriptors, the highest {max(fds)}: {top}"
            ) from None
        if nodelay:
            for a in agents:
                set_nodelay(a._link.client)
        return {"seconds": time.perf_counter() - t0, "pool_threads": self.fleet.pool.size}

    def fleet_stats(self) -> dict:
        totals: dict[str, int] = {}
        for i in range(len(self.fleet)):
            for k, v in self.fleet.agent(i).stats.items():
                totals[k] = totals.get(k, 0) + v
        return {"stats": totals, "process": proc_status(os.getpid())}

    def fleet_stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
            self.fleet = None
            gc.collect()

    def solo_start(self, config: dict, timeout: float, nodelay: bool) -> None:
        from edgeops_agent.agent import Agent
        from edgeops_agent.config import AgentConfig

        self.marks = _Marks()
        logger = logging.getLogger("edgeops_agent")
        logger.addHandler(self.marks)
        logger.setLevel(logging.INFO)
        self.solo = Agent(AgentConfig.from_dict(config))
        self.solo.start()
        _wait(lambda: self.solo.connected, timeout, "the solo agent connected")
        if nodelay:
            set_nodelay(self.solo._link.client)

    def cpu(self) -> float:
        """This process's CPU seconds (the solo agent's when it runs alone in a child process)."""
        return time.process_time()

    def solo_stop(self) -> dict:
        """The log marks of the solo run, and this process's CPU seconds before stopping."""
        cpu = time.process_time()
        logger = logging.getLogger("edgeops_agent")
        if self.solo is not None:
            self.solo.stop()
            self.solo = None
        if self.marks is not None:
            logger.removeHandler(self.marks)
        logger.setLevel(logging.NOTSET)
        return {"marks": self.marks.records if self.marks else [], "cpu": cpu}

    def subs_start(self, n: int, url: str, prefix: str, timeout: float, nodelay: bool) -> float:
        host, port = url.rsplit("/", 1)[1].split(":")
        t0 = time.perf_counter()
        self.subs = [_Subscriber(f"{prefix}-{i:03d}", host, int(port), nodelay) for i in range(n)]
        _wait(lambda: all(s.connected for s in self.subs), timeout, f"{n} subscribers", 0.05)
        return time.perf_counter() - t0

    def subs_subscribe(self, topic_filter: str, expected: int, timeout: float) -> None:
        for s in self.subs:
            s.subscribe(topic_filter, expected)
        _wait(lambda: all(s.acked for s in self.subs), timeout, "every SUBACK", 0.01)

    def subs_wait(self, timeout: float) -> dict:
        with contextlib.suppress(TimeoutError):
            _wait(lambda: all(s.done_at for s in self.subs), timeout, "every chunk", 0.01)
        return {
            "done": [s.done_at for s in self.subs if s.done_at],
            "incomplete": sum(1 for s in self.subs if not s.done_at),
        }

    def subs_stop(self) -> None:
        for s in self.subs:
            s.stop()
        self.subs = []
        # A stopped paho client keeps its two wake-up sockets until it is collected, and
        # paho's select() fails on descriptors above 1023: free them before the next phase.
        gc.collect()

    def close(self) -> None:
        self.subs_stop()
        if self.solo is not None:
            self.solo_stop()
        self.fleet_stop()


def host_main() -> int:
    """The child side: one JSON request per line on stdin, one JSON reply per line on stdout."""
    work = HostWork()
    try:
        for line in sys.stdin:
            req = json.loads(line)
            if req["op"] == "exit":
                break
            try:
                reply = {"ok": True, "result": getattr(work, req["op"])(**req["args"])}
            except Exception as exc:  # reported to the parent, which raises it there
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)
    finally:
        work.close()
    return 0


class RemoteHost:
    """This script run with ``--host`` in a child process."""

    def __init__(self, log: Path) -> None:
        self._log = open(log, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--host"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.pid = self.proc.pid
        self._replies: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._replies.put(line)

    def send(self, op: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float) -> Any:
        try:
            reply = json.loads(self._replies.get(timeout=timeout))
        except queue.Empty:
            raise TimeoutError(f"host {self.pid} did not answer within {timeout:g} s") from None
        if not reply["ok"]:
            raise RuntimeError(f"host {self.pid}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send("exit")
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


class LocalHost:
    """The same requests, run in this process (``--agent-processes 0``)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.work = HostWork()
        self._result: Any = None

    def send(self, op: str, **args: Any) -> None:
        self._result = getattr(self.work, op)(**args)

    def recv(self, timeout: float) -> Any:
        return self._result

    def close(self) -> None:
        self.work.close()


def on_all(hosts: list[Any], op: str, timeout: float, args: list[dict]) -> list[Any]:
    """Send ``op`` to every host at once, then collect the replies."""
    for h, a in zip(hosts, args, strict=True):
        h.send(op, **a)
    return [h.recv(timeout) for h in hosts]


def split(n: int, parts: int) -> list[int]:
    """``n`` as ``parts`` near-equal counts.

    >>> split(201, 2)
    [101, 100]
    """
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# -- the model --------------------------------------------------------------------------------


def build_model(home: Path, s: Settings, log: Path | None) -> tuple[Any, Any, Any, bytes]:
    """A new workspace with a Keras MLP 64-256-256-10 on digits, exported as ``tflite-int8``
    (about 100 KB) by the pipeline; ``(ws, model version, variant, bytes)``."""
    import yaml

    from edgeops import Workspace
    from edgeops.datasets import digits_frame, write_table
    from edgeops.pipeline import parse_pipeline
    from edgeops.pipeline.run import QuietReporter, run_pipeline

    with stderr_to(log):
        ws, _ = Workspace.init(home)
        ws.data.add(write_table(digits_frame(), home / "digits.csv"), "digits")
        ws.features.add(
            {
                "name": "pixels",
                "inputs": [{"name": c, "kind": "numeric"} for c in PIXELS],
                "steps": [{"op": "select", "columns": PIXELS}, {"op": "scale", "method": "minmax"}],
            }
        )
        doc = {
            "name": MODEL,
            "description": "fleet benchmark: a ~100 KB int8 TFLite model",
            "data": "digits@1",
            "label": "label",
            "features": "pixels@1",
            "split": {"test_size": 0.25, "seed": 42, "stratify": True},
            "model": {
                "kind": "keras_mlp",
                "params": {"hidden": [256, 256], "epochs": s.epochs},
                "seed": 0,
            },
            "export": ["tflite-int8"],
            "calibration": {"samples": 300, "seed": 0},
        }
        text = yaml.safe_dump(doc, sort_keys=False)
        result = run_pipeline(ws, parse_pipeline(doc, text), QuietReporter())
    if result.model_ref is None:
        raise RuntimeError(f"pipeline ended {result.status}: {result.gate_failures}")
    mv = ws.registry.get_version(result.model_ref)
    variant = next(v for v in mv.variants if v.name == "tflite-int8")
    return ws, mv, variant, ws.registry.variant_bytes(mv.ref, variant.name)


@dataclass
class Bench:
    """What every phase shares."""

    s: Settings
    root: Path
    broker: Broker
    ws: Any
    mv: Any
    variant: Any
    data: bytes
    key: Any
    server: Any  # MqttClient
    hosts: list[Any]

    def agent_config(self, device: str, state_dir: Path) -> dict[str, Any]:
        return {
            "device": device,
            "fleet": FLEET,
            "state_dir": str(state_dir),
            "broker": self.broker.url,
            "public_keys": [base64.b64encode(self.key.public).decode()],
            "runtimes": ["ai-edge-litert"],
            "tags": [TAG],
        }

    def envelope(self, device: str, seq: int, rollout: str) -> bytes:
        """The signed manifest the controller would publish (default ManifestOptions)."""
        from edgeops.fleet.deploy import ManifestOptions, build_manifest, sign

        manifest = build_manifest(
            fleet=FLEET,
            device=device,
            seq=seq,
            rollout=rollout,
            mv=self.mv,
            variant=self.variant,
            data=self.data,
            hardware=["*"],
            opts=ManifestOptions(),
        )
        return json.dumps(sign(manifest, self.key)).encode()


def _is_event(device: str, kind: str) -> Callable[[str, dict[str, Any]], bool]:
    return lambda topic, doc: doc.get("device") == device and doc.get("event") == kind


def _is_online(device: str) -> Callable[[str, dict[str, Any]], bool]:
    return lambda topic, doc: (
        doc.get("type") == "state" and doc.get("device") == device and doc.get("online") is True
    )


# -- (b) one agent alone ----------------------------------------------------------------------


def measure_solo(b: Bench) -> dict[str, Any]:
    """Manifest published -> activated event received, for one agent alone, and its steps."""
    from edgeops.fleet.deploy import DEFAULT_CHUNK_SIZE, publish_artifact
    from edgeops_protocol.topics import device_filter, device_topic

    publish_artifact(b.server, FLEET, b.data, DEFAULT_CHUNK_SIZE)  # retained, as in a rollout
    host = b.hosts[0]
    filters = [device_filter(FLEET, "events"), device_filter(FLEET, "state")]
    obs = Observer(b.broker.url, filters, b.s.nodelay)
    runs = []
    try:
        for k in range(b.s.solo_runs + 1):
            device = f"solo-{k}"
            since = time.time()
            host.send(
                "solo_start",
                config=b.agent_config(device, b.root / "solo" / device),
                timeout=30,
                nodelay=b.s.nodelay,
            )
            host.recv(40)
            obs.wait_for(_is_online(device), since, 30, f"{device} online")
            payload = b.envelope(device, 1, "solo")
            host.send("cpu")
            cpu0 = host.recv(10)
            t0 = time.time()
            b.server.publish_all([(device_topic(FLEET, device, "desired"), payload, True)])
            got, _ = obs.wait_for(_is_event(device, "activated"), t0, 60, f"{device} activated")
            ts = {
                kind: obs.wait_for(_is_event(device, kind), t0, 5, kind)[1]["ts"]
                for kind in ("downloading", "verified", "activated")
            }
            host.send("solo_stop")
            stopped = host.recv(30)
            marks = stopped["marks"]
            health = next((t for t, m in marks if m.startswith("health check passed")), None)
            runs.append(
                {
                    "total": got - t0,
                    "manifest": ts["downloading"] - t0,  # parse, verify signature, persist seq
                    "download": ts["verified"] - ts["downloading"],  # chunks, assemble, sha256
                    "health": (health or ts["activated"]) - ts["verified"],
                    "activate": ts["activated"] - (health or ts["activated"]),
                    "report": got - ts["activated"],
                    "cpu": stopped["cpu"] - cpu0,  # the host process, from the publish
                    "warmup": k == 0,
                }
            )
            print(
                f"    solo run {k}{' (warm-up)' if k == 0 else ''}: "
                f"{1000 * runs[-1]['total']:.1f} ms, {1000 * runs[-1]['cpu']:.0f} ms CPU",
                flush=True,
            )
    finally:
        obs.close()
    measured = [r for r in runs if not r["warmup"]]
    steps = ("total", "manifest", "download", "health", "activate", "report", "cpu")
    return {
        "runs": runs,
        "median": {k: statistics.median(r[k] for r in measured) for k in steps},
        "b": statistics.median(r["total"] for r in measured),
        "b_cpu": statistics.median(r["cpu"] for r in measured),
    }


# -- (c) fan-out to plain subscribers ---------------------------------------------------------


def measure_fanout(b: Bench) -> dict[str, Any]:
    """Publish the artifact's chunks to N subscribed plain clients; until all hold all."""
    from edgeops.fleet.deploy import DEFAULT_CHUNK_SIZE, publish_artifact
    from edgeops_protocol.chunks import split_chunks
    from edgeops_protocol.topics import chunk_filter

    n = b.s.agents
    chunks = len(split_chunks(b.data, DEFAULT_CHUNK_SIZE))
    sha = b.variant.sha256
    counts = split(n, len(b.hosts))
    started = on_all(
        b.hosts,
        "subs_start",
        120,
        [
            {
                "n": c,
                "url": b.broker.url,
                "prefix": f"sub{i}",
                "timeout": 60,
                "nodelay": b.s.nodelay,
            }
            for i, c in enumerate(counts)
        ],
    )
    runs = []
    try:
        for r in range(b.s.fanout_runs):
            fleet = f"fanout-{r}"  # a new topic: nothing retained on it yet
            on_all(
                b.hosts,
                "subs_subscribe",
                60,
                [{"topic_filter": chunk_filter(fleet, sha), "expected": chunks, "timeout": 30}]
                * len(b.hosts),
            )
            cpu0 = {h.pid: cpu_seconds(h.pid) for h in b.hosts}
            t0 = time.time()
            publish_artifact(b.server, fleet, b.data, DEFAULT_CHUNK_SIZE)
            acked = time.time()
            results = on_all(b.hosts, "subs_wait", 90, [{"timeout": 60}] * len(b.hosts))
            done = [t - t0 for res in results for t in res["done"]]
            incomplete = sum(res["incomplete"] for res in results)
            runs.append(
                {
                    "c": max(done) if not incomplete else float("nan"),
                    "p50": percentile(done, 50),
                    "publish_acked": acked - t0,
                    "incomplete": incomplete,
                    "host_cpu_s": sum(cpu_seconds(p) - c for p, c in cpu0.items()),
                }
            )
            print(
                f"    fan-out run {r}: {1000 * runs[-1]['c']:.0f} ms to {n} subscribers", flush=True
            )
    finally:
        on_all(b.hosts, "subs_stop", 60, [{}] * len(b.hosts))
    return {
        "chunks": chunks,
        "chunk_size": DEFAULT_CHUNK_SIZE,
        "connect_s": max(started),
        "runs": runs,
        "c": statistics.median(r["c"] for r in runs),
    }


# -- (a) the rollout --------------------------------------------------------------------------


class Timings:
    """Calls and seconds of instance methods, wrapped in place (the classes are untouched)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}
        self.last_end: dict[str, float] = {}

    def wrap(self, obj: Any, name: str, label: str) -> None:
        fn = getattr(obj, name)
        slot = self.calls.setdefault(label, [])

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                slot.append(time.perf_counter() - t)
                self.last_end[label] = time.time()

        setattr(obj, name, timed)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per label: calls, total seconds, mean, and the first and last call in ms."""
        return {
            label: {
                "calls": len(xs),
                "seconds": sum(xs),
                "mean_ms": 1000 * statistics.fmean(xs) if xs else 0.0,
                "first_ms": 1000 * xs[0] if xs else 0.0,
                "last_ms": 1000 * xs[-1] if xs else 0.0,
            }
            for label, xs in self.calls.items()
        }


DEPLOY = "controller._deploy (one device's manifest)"


def measure_rollouts(b: Bench) -> dict[str, Any]:
    """``rollouts`` times: a new fleet of N agents, one rollout; the median run is reported."""
    runs = []
    for r in range(b.s.rollouts):
        runs.append(measure_rollout(b, f"{FLEET}-{r}"))
        print(f"    rollout {r}: {runs[-1]['status']}, a = {runs[-1]['a']:.2f} s", flush=True)
    median = sorted(runs, key=lambda x: x["a"])[(len(runs) - 1) // 2]
    return {
        **median,
        "a_runs": [x["a"] for x in runs],
        "other_cpu_runs": [x["cpu_s"]["other processes"] for x in runs],
        "a": statistics.median(x["a"] for x in runs),
    }


def measure_rollout(b: Bench, fleet: str) -> dict[str, Any]:
    """One stage to N new simulated agents of ``fleet``: ``create`` until the controller
    records completion. The controller gets a workspace handle and an MQTT client of its own,
    as ``edgeops rollout start`` would."""
    from sqlalchemy import select

    from edgeops import Workspace
    from edgeops.fleet.controller import TERMINAL, RolloutController, RolloutOptions
    from edgeops.mqtt import MqttClient
    from edgeops.store.schema import Desired

    n = b.s.agents
    counts = split(n, len(b.hosts))
    started = on_all(
        b.hosts,
        "fleet_start",
        180,
        [
            {
                "n": c,
                "prefix": f"sim{i}",
                "root": str(b.root / fleet),
                "config": {**b.agent_config("x", b.root / "unused"), "fleet": fleet},
                "timeout": 120,
                "nodelay": b.s.nodelay,
            }
            for i, c in enumerate(counts)
        ],
    )
    os.environ["EDGEOPS_FLEET"] = fleet
    ws = Workspace.open(b.ws.settings.home)
    client = MqttClient(b.broker.url).connect()
    if b.s.nodelay:
        set_nodelay(client.client)
    try:
        ctl = RolloutController(ws, b.key, client)

        def online() -> bool:
            ctl.fleet.sync(client, quiet=0.3)
            return sum(1 for d in ctl.fleet.devices(f"tag:{TAG}") if d.online) >= n

        _wait(online, 60, f"{n} agents online in the fleet store", poll=0.5)
        timings = Timings()
        for obj, name, label in (
            (ctl, "_advance", "controller._advance (engine, DB, deploys)"),
            (ctl, "_deploy", DEPLOY),
            (ctl.fleet, "next_seq", "  fleet.next_seq"),
            (ctl.fleet, "save_desired", "  fleet.save_desired"),
            (ws.registry, "get_version", "  registry.get_version"),
            (ws.registry, "variant_bytes", "  registry.variant_bytes"),
            (client, "publish_all", "  MqttClient.publish_all (waits for PUBACKs)"),
            (ctl.fleet, "apply_state", "fleet.apply_state (one state message)"),
            (ctl.fleet, "apply_event", "fleet.apply_event (one event message)"),
        ):
            timings.wrap(obj, name, label)
        time.sleep(1.2)
        before = broker_counters(b.broker.url)
        pids = {"controller": os.getpid(), "mosquitto": b.broker.proc.pid}
        pids.update({f"host {i}": h.pid for i, h in enumerate(b.hosts) if h.pid != os.getpid()})
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        busy0 = machine_busy_seconds()
        done: dict[str, Any] = {}

        def on_step(rid: str, summary: dict[str, Any]) -> None:
            if summary["status"] in TERMINAL and "at" not in done:
                done.update(at=time.time(), summary=summary)

        t0 = time.time()
        rid = ctl.create(b.mv.ref, f"tag:{TAG}", RolloutOptions(stages=(1.0,), timeout=120.0))
        ctl.run(until=lambda: "at" in done, on_step=on_step, max_seconds=b.s.rollout_limit_s)
        t_end = done.get("at", time.time())
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        # /proc counts in 10 ms ticks: an idle machine can come out a little below zero
        cpu["other processes"] = max(0.0, machine_busy_seconds() - busy0 - sum(cpu.values()))
        time.sleep(1.2)
        after = broker_counters(b.broker.url)
        status = ctl.status(rid)
        events = ctl.fleet.events(rollout=rid, limit=100 * n)
        with ws.db.session() as s:
            rows = s.execute(select(Desired).where(Desired.fleet == fleet)).scalars()
            published = {d.device_id: _epoch(d.updated_at) for d in rows}
    finally:
        client.close()
        ws.close()
        os.environ["EDGEOPS_FLEET"] = FLEET
    hosts = on_all(b.hosts, "fleet_stats", 60, [{}] * len(b.hosts))
    on_all(b.hosts, "fleet_stop", 120, [{}] * len(b.hosts))
    first: dict[str, dict[str, float]] = {}
    recorded: dict[str, float] = {}
    for e in sorted(events, key=lambda e: e.device_ts):
        first.setdefault(e.device_id, {}).setdefault(e.event, e.device_ts)
        if e.event == "activated":
            recorded.setdefault(e.device_id, _epoch(e.at))
    activated = [d for d, ev in first.items() if "activated" in ev]
    stats: dict[str, int] = {}
    for h in hosts:
        for k, v in h["stats"].items():
            stats[k] = stats.get(k, 0) + v
    timeline = {
        "manifest published": [published[d] - t0 for d in activated if d in published],
        "manifest accepted (downloading 0)": [first[d]["downloading"] - t0 for d in activated],
        "verified": [first[d]["verified"] - t0 for d in activated],
        "activated (device clock)": [first[d]["activated"] - t0 for d in activated],
        "activated recorded by the controller": [recorded[d] - t0 for d in activated],
    }
    calls = timings.summary()
    return {
        "fleet": fleet,
        "rollout": rid,
        "status": status["status"],
        "counts": {k: v for k, v in status["counts"].items() if v},
        "a": t_end - t0,
        "finished": "at" in done,
        "activated": len(activated),
        "timeline": {k: spread(v) for k, v in timeline.items()},
        "device_work": spread([first[d]["activated"] - first[d]["downloading"] for d in activated]),
        "ingest_lag": spread([_epoch(e.at) - e.device_ts for e in events]),
        "events": len(events),
        "states": calls["fleet.apply_state (one state message)"]["calls"],
        "controller": calls,
        "deploy_loop_s": timings.last_end.get(DEPLOY, t0) - t0,
        "cpu_s": cpu,
        "broker_bytes": {k: after[k] - before[k] for k in before},
        "agent_stats": stats,
        "hosts": [{"pid": h.pid, **r["process"]} for h, r in zip(b.hosts, hosts, strict=True)],
        "connect_s": max(r["seconds"] for r in started),
        "pool_threads": [r["pool_threads"] for r in started],
    }


# -- the agent process: start-up and memory ---------------------------------------------------


def measure_agent_process(b: Bench) -> dict[str, Any]:
    """``python -m edgeops_agent run``: spawn -> online state, and resident memory."""
    from edgeops_protocol.topics import device_filter, device_topic

    obs = Observer(b.broker.url, [device_filter(FLEET, "events"), device_filter(FLEET, "state")])
    folder = b.root / "procs"

    def spawn(device: str) -> tuple[subprocess.Popen, float]:
        cfg = folder / device / "agent.toml"
        if not cfg.exists():
            cfg.parent.mkdir(parents=True, exist_ok=True)
            values = b.agent_config(device, folder / device / "state")
            cfg.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
        log = open(folder / device / "agent.log", "ab")  # noqa: SIM115 - closed below
        since = time.time()
        cmd = [sys.executable, "-m", "edgeops_agent", "run", "--config", str(cfg)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        log.close()
        try:
            at, _ = obs.wait_for(_is_online(device), since, 60, f"{device} online")
        except BaseException:
            stop(proc)
            raise
        return proc, at - since

    def stop(proc: subprocess.Popen) -> None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    fresh, with_model, idle, loaded, after_restart = [], [], [], {}, []
    try:
        for i in range(b.s.startup_runs):
            device = f"proc-{i}"
            proc, seconds = spawn(device)
            try:
                fresh.append(seconds)
                if i == 0:  # memory: settled, before any model and with one
                    time.sleep(1.0)
                    idle.append(proc_status(proc.pid))
                    t0 = time.time()
                    topic = device_topic(FLEET, device, "desired")
                    b.server.publish_all([(topic, b.envelope(device, 1, "memory"), True)])
                    obs.wait_for(_is_event(device, "activated"), t0, 60, f"{device} activated")
                    time.sleep(1.0)
                    loaded = proc_status(proc.pid)
            finally:
                stop(proc)
        for i in range(b.s.startup_runs):  # proc-0 again: it loads its active model at start
            proc, seconds = spawn("proc-0")
            try:
                with_model.append(seconds)
                if i == 0:
                    time.sleep(1.0)
                    after_restart.append(proc_status(proc.pid))
            finally:
                stop(proc)
    finally:
        obs.close()
    return {
        "startup_fresh_s": fresh,
        "startup_with_model_s": with_model,
        "startup_fresh_median_s": statistics.median(fresh),
        "startup_with_model_median_s": statistics.median(with_model),
        "idle": idle[0],
        "with_model": loaded,
        "after_restart_with_model": after_restart[0],
        "rss_mib": loaded["VmRSS"] / 1024,
    }


IMPORT_STEPS = (
    ("python", ""),
    ("+ numpy", "import numpy"),
    ("+ paho-mqtt", "import paho.mqtt.client"),
    ("+ cryptography (Ed25519)", "from cryptography.hazmat.primitives.asymmetric import ed25519"),
    ("+ edgeops_agent (agent, mqtt)", "import edgeops_agent.agent, edgeops_agent.mqtt"),
    ("+ ai_edge_litert.interpreter", "from ai_edge_litert.interpreter import Interpreter"),
    (
        "+ the model loaded (allocate_tensors)",
        "it = Interpreter(model_path=MODEL_PATH, num_threads=1); it.allocate_tensors()",
    ),
)


def import_costs(b: Bench) -> dict[str, Any]:
    """Resident memory after each import in a bare interpreter, and ``-X importtime`` tops."""
    model_path = b.root / "model.tflite"
    model_path.write_bytes(b.data)
    rss = []
    code = [f"MODEL_PATH = {str(model_path)!r}"]
    for label, line in IMPORT_STEPS:
        if line:
            code.append(line)
        script = "\n".join(
            [
                *code,
                "import re",
                "print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))",
            ]
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
        )
        rss.append({"step": label, "rss_kib": int(out.stdout.split()[-1])})
    walls = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "edgeops_agent", "--help"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        walls.append(time.perf_counter() - t)
    return {
        "rss_steps": rss,
        "help_wall_s": statistics.median(walls),
        "help_importtime": importtime(["-m", "edgeops_agent", "--help"]),
        "run_importtime": importtime(
            ["-c", "import edgeops_agent.agent, edgeops_agent.mqtt, ai_edge_litert.interpreter"]
        ),
    }


def importtime(args: list[str], top: int = 6) -> list[dict[str, Any]]:
    """The top-level imports with the largest cumulative time under ``python -X importtime``."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = []
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)", line)
        if m and not m.group(3):  # not indented: imported at the top level
            rows.append({"module": m.group(4), "cumulative_ms": int(m.group(2)) / 1000})
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:top]


# -- report -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    host = _report.machine(("paho-mqtt", "ai-edge-litert", "cryptography", "numpy", "SQLAlchemy"))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        out = subprocess.run([mosq, "-h"], capture_output=True, text=True, timeout=10)
        host["packages"]["mosquitto"] = out.stdout.split("version", 1)[1].split()[0]
    return host


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "MISS"


def print_report(r: dict[str, Any], s: Settings) -> None:
    n, cores = s.agents, r["cores"]
    solo, fan, roll, proc = r["solo"], r["fanout"], r["rollout"], r["agent_process"]
    print("\n== (b) one agent alone: manifest published -> activated event received ==")
    print("  median of", s.solo_runs, "runs (after a warm-up run), ms:")
    for k, v in solo["median"].items():
        print(f"    {k:10}{1000 * v:9.1f}")
    print(
        f"\n== (c) fan-out of {fan['chunks']} chunks of {fan['chunk_size']:,} B to {n} "
        "plain subscribers =="
    )
    for i, run in enumerate(fan["runs"]):
        print(
            f"  run {i}: last subscriber done {1000 * run['c']:.0f} ms, median "
            f"{1000 * run['p50']:.0f} ms, publish acknowledged {1000 * run['publish_acked']:.0f} "
            f"ms, subscriber CPU {run['host_cpu_s']:.2f} s"
        )
    print(f"  c = median {1000 * fan['c']:.0f} ms")
    print(f"\n== (a) rollout: one stage to {n} agents, {s.rollouts} run(s) ==")
    print(
        f"  a = {', '.join(f'{x:.2f}' for x in roll['a_runs'])} s; median {roll['a']:.2f} s; "
        "CPU seconds of other processes on the machine during each: "
        + ", ".join(f"{x:.1f}" for x in roll["other_cpu_runs"])
    )
    print(
        f"  the median run, {roll['rollout']}: {roll['status']}, {roll['counts']}; last "
        f"manifest published at {roll['deploy_loop_s']:.2f} s"
    )
    print("  per device, seconds from rollout start:   min      p50      p95      max")
    for k, v in roll["timeline"].items():
        print(f"    {k:38}{v['min']:7.2f}  {v['p50']:7.2f}  {v['p95']:7.2f}  {v['max']:7.2f}")
    w, lag = roll["device_work"], roll["ingest_lag"]
    print(
        f"  device work (accepted -> activated): p50 {1000 * w['p50']:.0f} ms, "
        f"p95 {1000 * w['p95']:.0f} ms"
    )
    print(
        f"  {roll['events']} events; event -> recorded by the controller: p50 "
        f"{lag['p50']:.2f} s, p95 {lag['p95']:.2f} s, max {lag['max']:.2f} s"
    )
    if s.agent_processes:
        hosts_cpu = sum(v for k, v in roll["cpu_s"].items() if k.startswith("host"))
        print(f"  device CPU: {1000 * hosts_cpu / n:.1f} ms per device (agent hosts' CPU / N)")
    print(f"  {'controller time (wrapped calls)':50}calls  total s  mean ms  first ms  last ms")
    for k, v in roll["controller"].items():
        print(
            f"    {k:48}{v['calls']:5}{v['seconds']:9.2f}{v['mean_ms']:9.2f}"
            f"{v['first_ms']:10.1f}{v['last_ms']:9.1f}"
        )
    print(
        "  CPU seconds during (a): "
        + ", ".join(f"{k} {v:.1f}" for k, v in roll["cpu_s"].items())
        + f" (of {cores} x {roll['a']:.1f} = {cores * roll['a']:.1f} available)"
    )
    br = roll["broker_bytes"]
    print(
        f"  messages: {n} manifests and {fan['chunks']} chunks published; the controller "
        f"handled {roll['events']:,} events and {roll['states']:,} states ({n} of them the "
        "retained ones it reads on subscribing)"
    )
    print(
        f"  broker: {br['bytes_received'] / 1e6:.1f} MB in, {br['bytes_sent'] / 1e6:.1f} MB "
        f"out ({br['bytes_received'] / n / 1e3:.0f} kB in and {br['bytes_sent'] / n / 1e3:.0f} "
        "kB out per device)"
    )
    for h in roll["hosts"]:
        print(f"  agent host {h['pid']}: RSS {h['VmRSS'] / 1024:.0f} MiB, {h['Threads']} threads")
    print(f"  agent counters: {roll['agent_stats']}")
    print("\n== the agent process (python -m edgeops_agent run, ai-edge-litert) ==")
    print(
        f"  start-up (spawn -> online state on the broker): fresh, median "
        f"{1000 * proc['startup_fresh_median_s']:.0f} ms "
        f"{[round(1000 * x) for x in proc['startup_fresh_s']]}; with an active model, median "
        f"{1000 * proc['startup_with_model_median_s']:.0f} ms "
        f"{[round(1000 * x) for x in proc['startup_with_model_s']]}"
    )
    for label, st in (
        ("before any model", proc["idle"]),
        ("model activated", proc["with_model"]),
        ("restarted with the model", proc["after_restart_with_model"]),
    ):
        print(
            f"  RSS {label:25}{st['VmRSS'] / 1024:7.1f} MiB (anonymous "
            f"{st['RssAnon'] / 1024:.1f}, file-backed {st['RssFile'] / 1024:.1f}; peak "
            f"{st['VmHWM'] / 1024:.1f}), {st['Threads']} threads"
        )
    imp = r["imports"]
    print("  resident memory of a bare interpreter after each import (MiB, cumulative):")
    prev = 0
    for step in imp["rss_steps"]:
        print(
            f"    {step['step']:40}{step['rss_kib'] / 1024:7.1f}  "
            f"(+{(step['rss_kib'] - prev) / 1024:.1f})"
        )
        prev = step["rss_kib"]
    print(
        f"  `python -m edgeops_agent --help`: {1000 * imp['help_wall_s']:.0f} ms wall; "
        "import time, cumulative: "
        + ", ".join(f"{x['module']} {x['cumulative_ms']:.1f} ms" for x in imp["help_importtime"])
    )
    print(
        "  agent run path imports, cumulative: "
        + ", ".join(f"{x['module']} {x['cumulative_ms']:.1f} ms" for x in imp["run_importtime"])
    )
    ratio = r["ratio"]
    print("\n== summary ==")
    print(
        f"  a = {roll['a']:.2f} s, b = {1000 * solo['b']:.1f} ms, c = {1000 * fan['c']:.0f} ms, "
        f"N = {n}, cores = {cores}{'; TCP_NODELAY everywhere' if s.nodelay else ''}"
    )
    print(
        f"  a / (N x b / cores + c) = {roll['a']:.2f} / ({n} x {solo['b']:.4f} / {cores} + "
        f"{fan['c']:.3f}) = {ratio:.2f}  (target <= {TARGETS['overhead_ratio']}) "
        f"{verdict(ratio, TARGETS['overhead_ratio'])}"
    )
    print(
        f"  context: with b = the solo agent's CPU time ({1000 * solo['b_cpu']:.1f} ms) instead "
        f"of its wall time, the ratio is {r['ratio_cpu']:.2f}"
    )
    print(
        f"  devices activated per minute: {r['per_minute']:,.0f} ("
        f"{r['per_minute'] / AWS_IOT_JOBS_PER_MINUTE:.1f}x AWS IoT Jobs' maximum of "
        f"{AWS_IOT_JOBS_PER_MINUTE:,}/min)"
    )
    print(
        f"  agent RSS with ai-edge-litert and the model loaded: {proc['rss_mib']:.1f} MiB "
        f"(target <= {TARGETS['agent_rss_mib']:g}) "
        f"{verdict(proc['rss_mib'], TARGETS['agent_rss_mib'])}"
    )
    print(
        f"  agent start-up: {1000 * proc['startup_fresh_median_s']:.0f} ms fresh, "
        f"{1000 * proc['startup_with_model_median_s']:.0f} ms with a model"
    )


def run_all(s: Settings, verbose: bool, t0: float) -> dict[str, Any]:
    from edgeops.fleet.keys import generate_key
    from edgeops.mqtt import MqttClient

    for var in ("EDGEOPS_DB_URL", "EDGEOPS_ARTIFACTS", "EDGEOPS_HOME"):
        os.environ.pop(var, None)  # a new temporary workspace, whatever the environment says
    os.environ["EDGEOPS_FLEET"] = FLEET

    def step(text: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {text}", flush=True)

    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeops-fleet-")))
        broker = start_broker(root / "broker", "sys_interval 1\n")
        stack.callback(broker.stop)
        step(f"mosquitto on {broker.url}; training and exporting the model")
        ws, mv, variant, data = build_model(root / "ws", s, None if verbose else root / "tf.log")
        stack.callback(ws.close)
        step(f"{mv.ref} {variant.name}: {len(data):,} bytes")
        key = generate_key(root / "keys")
        server = MqttClient(broker.url).connect()
        stack.callback(server.close)
        if s.nodelay:
            set_nodelay(server.client)
        if s.agent_processes:
            hosts: list[Any] = [RemoteHost(root / f"host{i}.log") for i in range(s.agent_processes)]
        else:
            hosts = [LocalHost()]
        for h in hosts:
            stack.callback(h.close)
        b = Bench(s, root, broker, ws, mv, variant, data, key, server, hosts)
        step(f"(b) one agent alone, {s.solo_runs} runs after a warm-up")
        solo = measure_solo(b)
        step(f"(c) fan-out to {s.agents} plain subscribers")
        fanout = measure_fanout(b)
        step(
            f"(a) rollout to {s.agents} simulated agents in {len(hosts)} process(es), "
            f"{s.rollouts} time(s)"
        )
        rollout = measure_rollouts(b)
        for h in hosts:
            h.close()
        step("agent process: start-up and memory")
        process = measure_agent_process(b)
        imports = import_costs(b)
        step("done")
        return {
            "model": {
                "ref": mv.ref,
                "variant": variant.name,
                "bytes": len(data),
                "sha256": variant.sha256,
            },
            "solo": solo,
            "fanout": fanout,
            "rollout": rollout,
            "agent_process": process,
            "imports": imports,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, help="simulated agents (default 200; 50 --quick)")
    parser.add_argument("--quick", action="store_true", help="50 agents, fewer repetitions")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--agent-processes",
        type=int,
        default=2,
        metavar="P",
        help="child processes for the agents and subscribers (0: this process; default 2)",
    )
    parser.add_argument(
        "--nodelay",
        action="store_true",
        help="experiment: TCP_NODELAY on the broker and on every client socket of the run",
    )
    parser.add_argument("--verbose", action="store_true", help="let TensorFlow log to stderr")
    parser.add_argument("--host", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.host:
        return host_main()
    if (args.agents is not None and args.agents < 1) or args.agent_processes < 0:
        parser.error("--agents must be >= 1 and --agent-processes >= 0")
    s = settings(args.quick, args.agents, args.agent_processes, args.nodelay)
    if -(-s.agents // max(1, s.agent_processes)) > 250:
        parser.error("at most 250 agents per process (paho's select()); raise --agent-processes")
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc)
    host = machine()
    print(
        f"edgeops fleet benchmark ({'quick' if s.quick else 'full'}), {started:%Y-%m-%d %H:%M} UTC"
        f"\n{host['cpu']}, {host['cores']} cores, Python {host['python']}, "
        + ", ".join(f"{k} {v}" for k, v in host["packages"].items())
        + f"; load average {host['load_average_1min']:.2f}",
        flush=True,
    )
    r = run_all(s, args.verbose, t0)
    cores = os.cpu_count() or 1
    a, b, c = r["rollout"]["a"], r["solo"]["b"], r["fanout"]["c"]
    r.update(
        cores=cores,
        ratio=overhead_ratio(a, b, c, s.agents, cores),
        ratio_cpu=overhead_ratio(a, r["solo"]["b_cpu"], c, s.agents, cores),
        per_minute=r["rollout"]["activated"] / a * 60,
    )
    print_report(r, s)
    seconds = time.perf_counter() - t0
    load = os.getloadavg()[0]
    print(f"\nfinished in {seconds:.0f} s; load average {load:.2f}")
    checks = {
        "overhead_ratio": r["ratio"] <= TARGETS["overhead_ratio"],
        "agent_rss_mib": r["agent_process"]["rss_mib"] <= TARGETS["agent_rss_mib"],
        "rollout_completed": r["rollout"]["status"] == "completed"
        and r["rollout"]["activated"] == s.agents,
    }
    if args.json:
        report = {
            "command": " ".join(["python", "bench/fleet.py", *(argv or sys.argv[1:])]),
            "date": started.isoformat(timespec="seconds"),
            "machine": host,
            "settings": asdict(s),
            "targets": TARGETS,
            "checks": checks,
            "results": r,
            "seconds": seconds,
            "load_average_1min_at_end": load,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if args.check and not all(checks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
