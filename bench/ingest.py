"""Telemetry ingest benchmark: the collector against a bare paho subscriber, in one run.

Usage::

    python bench/ingest.py [--windows 20000] [--devices 100] [--publishers 2]
                           [--pg URL | --no-pg] [--repeats 1] [--json OUT] [--check]
                           [--modes backlog,live] [--parts]

Everything runs on this machine, on loopback: the benchmark starts its own
Mosquitto on a free port (the test suite's settings), registers a model whose
``tflite-int8`` variant has a 33-feature baseline (10 quantile bins each, so 12
counts per histogram) and 4 classes, registers ``--devices`` devices, and builds
``--windows`` telemetry windows with the agent's own ``WindowStats`` (256
predictions each; about 2.1 KB of JSON per window). Then, for each consumer,
one after the other:

* **(i) bare**: a paho MQTT 5 client with the same subscription (QoS 1, the same
  receive maximum) whose ``on_message`` only counts;
* **(ii) SQLite**: the real :class:`~edgeops.monitoring.collector.Collector`
  (shared subscription, manual acks after each commit, batches of 500) storing
  into a fresh SQLite workspace;
* **(iii) PostgreSQL**: the same into a fresh database on ``--pg``.

Each consumer is measured twice:

* **backlog**: its session is created (subscribe, disconnect), the publishers
  publish every window (the broker queues them), then the consumer connects and
  drains; rate = windows / (last message handled - connect). This is the
  consumer's own speed, independent of the publishers.
* **live**: the consumer is connected first and ``--publishers`` processes
  publish as fast as they can (QoS 1, waiting for every PUBACK); rate = windows /
  (last message handled - first publish). On two cores the publishers, the
  broker and the consumer share the CPU, so this is the speed of the whole path.

For the collector "handled" means committed and acknowledged, and the run
checks that exactly ``--windows`` rows are stored. Targets (from the issue):
SQLite rate / bare rate >= 0.5, per mode; PostgreSQL is reported. The exit
status is 0 whatever the numbers; with ``--check`` it is 1 when a target is
missed. Results are in docs/benchmarks.md.

``--parts`` also measures where one collector's CPU goes, per window, with thread
clocks in this process (:func:`parts`): parsing and storing batches alone, then the
collector's network thread, batching, parsing, storing and acknowledging while it
drains a backlog (with ``--modes ""``, only that).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from _broker import Broker, start_broker  # bench/_broker.py; the script folder is on sys.path

N_FEATURES = 33
LABELS = ["idle", "walk", "run", "stairs"]
PREDICTIONS_PER_WINDOW = 256
DISTINCT_STATS = 256  # distinct windows of counts, reused round-robin
RECEIVE_MAXIMUM = 1000
TARGET = 0.5
PG_DEFAULT = os.environ.get("EDGEOPS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


# --- broker ---------------------------------------------------------------------------------
# --- the workload -----------------------------------------------------------------------------
def make_baseline() -> dict[str, Any]:
    from edgeops_protocol.baseline import baseline_profile

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, N_FEATURES))
    outputs = rng.dirichlet(np.ones(len(LABELS)), size=2000)
    names = [f"f{j:02d}" for j in range(N_FEATURES)]
    return baseline_profile(x, outputs, names, LABELS, bins=10)


def make_stats(base: dict[str, Any]) -> list[dict[str, Any]]:
    """Distinct windows of counts from the agent's own WindowStats, on drifting inputs."""
    from edgeops_protocol.stats import WindowStats

    rng = np.random.default_rng(1)
    out = []
    for i in range(DISTINCT_STATS):
        w = WindowStats(base)
        shift = 0.5 * np.sin(i / 20)
        x = rng.normal(shift, 1.0, size=(PREDICTIONS_PER_WINDOW, N_FEATURES))
        y = rng.dirichlet(np.ones(len(LABELS)) * 0.7, size=PREDICTIONS_PER_WINDOW)
        lat = rng.lognormal(0.3, 0.5, size=PREDICTIONS_PER_WINDOW)
        for row, outp, ms in zip(x, y, lat):  # noqa: B905
            w.update(row, outp, float(ms))
        out.append(w.window())
    return out


def make_messages(
    fleet: str, devices: int, n: int, model: dict[str, Any], stats: list[dict[str, Any]]
) -> list[tuple[str, bytes]]:
    """``n`` windows, round-robin over devices: device k sends seq 1, 2, ... of boot b1."""
    msgs = []
    for i in range(n):
        dev, seq = f"dev-{i % devices:04d}", i // devices + 1
        body = {
            "protocol": 1,
            "type": "telemetry",
            "fleet": fleet,
            "device": dev,
            "boot": "b1",
            "seq": seq,
            "start": 1_795_760_000.0 + 60 * seq,
            "end": 1_795_760_060.0 + 60 * seq,
            "model": model,
            "stats": stats[i % len(stats)],
        }
        msgs.append((f"edgeops/{fleet}/devices/{dev}/telemetry", json.dumps(body).encode()))
    return msgs


# --- publishers (child processes) ----------------------------------------------------------------
def _publish(host: str, port: int, msgs: list[tuple[str, bytes]], ready: Any, go: Any) -> None:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"bench-pub-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(host, port, keepalive=60)
    c.loop_start()
    ready.set()
    go.wait()
    infos = [c.publish(t, p, qos=1) for t, p in msgs]
    for info in infos:
        info.wait_for_publish(120)
    c.disconnect()
    c.loop_stop()


def publish_all(broker: Broker, msgs: list[tuple[str, bytes]], procs: int) -> tuple[float, Any]:
    """Start ``procs`` publisher processes; returns (start time, a join function)."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    workers = []
    for k in range(procs):
        ready = ctx.Event()
        p = ctx.Process(target=_publish, args=(broker.host, broker.port, msgs[k::procs], ready, go))
        p.start()
        ready.wait(60)
        workers.append(p)
    t0 = time.monotonic()
    go.set()

    def join() -> float:
        for p in workers:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"a publisher exited with {p.exitcode}")
        return time.monotonic()

    return t0, join


# --- consumers --------------------------------------------------------------------------------
class Bare:
    """A paho MQTT 5 subscriber that only counts (acknowledges on receipt, as paho does)."""

    def __init__(self, broker: Broker, fleet: str, expect: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.broker, self.expect = broker, expect
        self.topic = f"$share/bench/edgeops/{fleet}/devices/+/telemetry"
        self.n, self.last, self.done = 0, 0.0, threading.Event()
        self.cpu0 = self.cpu = 0.0
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{fleet}", protocol=mqtt.MQTTv5
        )
        self.props = Properties(PacketTypes.CONNECT)
        self.props.SessionExpiryInterval = 3600
        self.props.ReceiveMaximum = RECEIVE_MAXIMUM
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe(self.topic, 1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_message(self, *args: Any) -> None:
        self.n += 1
        if self.n >= self.expect:
            self.last = time.monotonic()
            self.cpu = time.process_time() - self.cpu0  # this process does nothing else
            self.done.set()

    def connect(self) -> float:
        t = time.monotonic()
        self.cpu0 = time.process_time()
        self.client.connect(
            self.broker.host, self.broker.port, clean_start=False, properties=self.props
        )
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("bare subscriber did not subscribe")
        return t

    def wait(self, timeout: float) -> float:
        if not self.done.wait(timeout):
            raise RuntimeError(f"bare subscriber got {self.n} of {self.expect} messages")
        return self.last

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _collector(
    home: str, db_url: str, fleet: str, url: str, client_id: str, batch: int,
    ready: Any, go: Any, stop: Any, out: Any,
) -> None:  # fmt: skip
    """A child process running the real collector on the workspace at ``home``."""
    os.environ["EDGEOPS_DB_URL"] = db_url
    from edgeops import Workspace
    from edgeops.monitoring.collector import Collector, CollectorOptions, tune_gc
    from edgeops.monitoring.ingest import Ingestor

    ws = Workspace.open(home)
    opts = CollectorOptions(client_id=client_id, batch_size=batch, receive_maximum=RECEIVE_MAXIMUM)
    collector = Collector(Ingestor(ws.db, fleet), url, opts)

    def on_batch(res: Any) -> None:
        n = res.accepted["telemetry"] + sum(res.rejected.values())
        out.put((time.monotonic(), n, sum(res.rejected.values())))

    tune_gc()  # as `edgeops collector` does
    ready.set()
    go.wait()
    cpu = time.process_time()
    collector.start()
    collector.run(until=stop.is_set, on_batch=on_batch, report_every=1e9)
    out.put(("cpu", time.process_time() - cpu, 0))
    collector.close()
    ws.close()


class Stored:
    """The real collector in ``procs`` child processes (one shared subscription group);
    a window counts as handled once its batch is committed and acknowledged."""

    def __init__(
        self, ws: Any, fleet: str, broker: Broker, expect: int, batch: int, procs: int
    ) -> None:
        ctx = mp.get_context("spawn")
        self.expect, self.handled, self.rejected, self.last = expect, 0, 0, 0.0
        self.cpu = 0.0
        self.go, self.stop, self.out = ctx.Event(), ctx.Event(), ctx.Queue()
        self.procs = []
        for k in range(procs):
            ready = ctx.Event()
            args = (
                str(ws.settings.home), ws.settings.db_url, fleet, broker.url,
                f"bench-collector-{fleet}-{k}", batch, ready, self.go, self.stop, self.out,
            )  # fmt: skip
            proc = ctx.Process(target=_collector, args=args)
            proc.start()
            if not ready.wait(120):
                raise RuntimeError("a collector process did not start")
            self.procs.append(proc)

    def connect(self) -> float:
        t = time.monotonic()
        self.go.set()
        return t

    def wait(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.handled < self.expect:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"collector handled {self.handled} of {self.expect}")
            try:
                t, n, rejected = self.out.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            self.handled += n
            self.rejected += rejected
            self.last = max(self.last, t)
        return self.last

    def close(self) -> None:
        """Stop the children; ``cpu`` is then their CPU seconds from connect to stop (the
        time after the last window is idle waiting, so it adds next to nothing)."""
        self.stop.set()
        for proc in self.procs:
            proc.join(60)
            if proc.exitcode != 0:
                raise RuntimeError(f"a collector process exited with {proc.exitcode}")
        while True:
            try:
                t, n, _ = self.out.get(timeout=1.0)
            except queue.Empty:
                break
            if t == "cpu":
                self.cpu += n


# --- setup ------------------------------------------------------------------------------------
def open_workspace(folder: Path, db_url: str) -> Any:
    from edgeops import Workspace

    os.environ["EDGEOPS_DB_URL"] = db_url
    ws, _ = Workspace.init(folder)
    return ws


def register(ws: Any, fleet: str, devices: int, base: dict[str, Any]) -> dict[str, Any]:
    """The model (a tflite-int8 variant with the baseline) and the devices' states."""
    from edgeops.fleet.store import FleetStore
    from edgeops.registry import NewVariant
    from edgeops_protocol.messages import parse_state, state_message

    blob = b"\0\0\0\0TFL3" + os.urandom(64)
    meta = {
        "labels": LABELS,
        "baseline": base,
        "feature_names": [f["name"] for f in base["features"]],
    }
    mv = ws.registry.register(
        "wrist",
        blob,
        "tflite",
        labels=LABELS,
        variants=[NewVariant("tflite-int8", blob + b"q", "tflite", {}, meta)],
    )
    fs = FleetStore(ws.db, fleet)
    for k in range(devices):
        fs.apply_state(
            parse_state(
                state_message(
                    fleet=fleet,
                    device=f"dev-{k:04d}",
                    online=True,
                    boot="b1",
                    ts=0.0,
                    hardware="rpi4",
                    runtimes=["ai-edge-litert"],
                    accepted_seq=1,
                    model=None,
                    previous=None,
                    tags=[],
                )
            )
        )
    v = next(v for v in mv.variants if v.name == "tflite-int8")
    return {"name": "wrist", "version": mv.version, "variant": v.name, "sha256": v.sha256}


def stored_rows(ws: Any, fleet: str) -> int:
    from edgeops.monitoring.store import MonitoringStore

    return MonitoringStore(ws.db, fleet).window_count()


def pg_database(admin_url: str) -> tuple[str, Any]:
    """A new database on the PostgreSQL server; (SQLAlchemy URL, drop function)."""
    import psycopg

    name = f"edgeops_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}", drop


# --- one measurement ------------------------------------------------------------------------
def measure(
    kind: str, mode: str, broker: Broker, args: argparse.Namespace, setup: dict[str, Any]
) -> dict[str, Any]:
    """Rate of one consumer (``bare``, ``sqlite``, ``postgres``) in one mode."""
    fleet = f"b{uuid.uuid4().hex[:8]}"
    ws = setup.get("ws")
    model = setup["model"]
    if ws is not None:
        model = register(ws, fleet, args.devices, setup["base"])
    msgs = make_messages(fleet, args.devices, args.windows, model, setup["stats"])

    def consumer() -> Any:
        if kind == "bare":
            return Bare(broker, fleet, args.windows)
        procs = int(kind.split("x")[1]) if "x" in kind else 1
        return Stored(ws, fleet, broker, args.windows, args.batch_size, procs)

    if mode == "backlog":
        prime = consumer()
        prime.connect()
        time.sleep(1.0)  # connected and subscribed
        prime.close()
        _, join = publish_all(broker, msgs, args.publishers)
        join()
        c = consumer()
        t0 = c.connect()
    else:
        c = consumer()
        c.connect()
        time.sleep(0.3)
        t0, join = publish_all(broker, msgs, args.publishers)
    t_last = c.wait(timeout=600)
    t_pub_end = join() if mode == "live" else None
    c.close()
    out: dict[str, Any] = {
        "consumer": kind,
        "mode": mode,
        "messages": args.windows,
        "seconds": t_last - t0,
        "rate": args.windows / (t_last - t0),
        "cpu_us_per_message": c.cpu / args.windows * 1e6,
    }
    if t_pub_end is not None:
        out["publish_seconds"] = t_pub_end - t0
    if ws is not None:
        out["stored"] = stored_rows(ws, fleet)
    return out


# --- where the collector's time goes (--parts) -------------------------------------------------
def parts(kind: str, broker: Broker, args: argparse.Namespace, setup: dict[str, Any]) -> dict:
    """CPU µs per window of one collector, measured in this process with thread clocks:
    ``prepare`` and ``store`` alone on the batches (no MQTT), then the real collector
    draining a backlog: ``paho`` (its network thread), ``take`` (batching from the queue),
    ``prepare`` (parse and validate), ``store`` (database, commit included), ``acks``
    (the writer's MQTT acknowledgements and ack messages)."""
    import gc

    from edgeops.monitoring.collector import Collector, CollectorOptions, tune_gc
    from edgeops.monitoring.ingest import Ingestor

    ws, n, bs = setup["ws"], args.windows, args.batch_size
    clock: dict[str, float] = {"prepare": 0.0, "store": 0.0, "writer": 0.0}

    class Timed(Collector):
        def _prepare(self, batch: Any) -> Any:
            t = time.thread_time()
            try:
                return super()._prepare(batch)
            finally:
                clock["prepare"] += time.thread_time() - t

        def _store(self, batch: Any, prepared: Any) -> Any:
            t = time.thread_time()
            try:
                return super()._store(batch, prepared)
            finally:
                clock["store"] += time.thread_time() - t

        def _writer(self, *a: Any) -> None:
            try:
                super()._writer(*a)
            finally:
                clock["writer"] = time.thread_time()  # the thread's whole CPU time

    out: dict[str, float] = {}
    tune_gc()  # as `edgeops collector` does
    try:
        fleet = f"p{uuid.uuid4().hex[:8]}"
        msgs = make_messages(fleet, args.devices, n, register(ws, fleet, args.devices,
                             setup["base"]), setup["stats"])  # fmt: skip
        ing = Ingestor(ws.db, fleet)
        for i in range(0, n, bs):
            t0 = time.thread_time()
            prepared = ing.prepare(msgs[i : i + bs])
            t1 = time.thread_time()
            ing.store(prepared)
            out["alone_prepare"] = out.get("alone_prepare", 0.0) + t1 - t0
            out["alone_store"] = out.get("alone_store", 0.0) + time.thread_time() - t1

        fleet = f"p{uuid.uuid4().hex[:8]}"
        msgs = make_messages(fleet, args.devices, n, register(ws, fleet, args.devices,
                             setup["base"]), setup["stats"])  # fmt: skip
        opts = CollectorOptions(
            client_id=f"bench-parts-{fleet}", batch_size=bs, receive_maximum=RECEIVE_MAXIMUM
        )
        c = Timed(Ingestor(ws.db, fleet), broker.url, opts)
        c.start()  # the session, so that the broker keeps the backlog for it
        c.close()
        join = publish_all(broker, msgs, args.publishers)[1]
        join()
        done, handled = threading.Event(), [0]

        def on_batch(res: Any) -> None:
            handled[0] += res.accepted["telemetry"] + sum(res.rejected.values())
            if handled[0] >= n:
                done.set()

        c = Timed(Ingestor(ws.db, fleet), broker.url, opts)
        cpu0, main0 = time.process_time(), time.thread_time()
        c.start()
        c.run(until=done.is_set, on_batch=on_batch, report_every=1e9)
        cpu, main = time.process_time() - cpu0, time.thread_time() - main0
        c.close()
        out.update(
            collector=cpu,
            paho=cpu - main - clock["writer"],
            take=main - clock["prepare"],
            prepare=clock["prepare"],
            store=clock["store"],
            acks=clock["writer"] - clock["store"],
        )
    finally:
        gc.unfreeze()
        gc.enable()
    out = {k: v / n * 1e6 for k, v in out.items()}
    print(
        f"parts    {kind:10s} alone: prepare {out['alone_prepare']:.0f} + store "
        f"{out['alone_store']:.0f} us/window; collector {out['collector']:.0f} us/window = "
        + ", ".join(f"{k} {out[k]:.0f}" for k in ("paho", "take", "prepare", "store", "acks"))
    )
    return {"consumer": kind, "mode": "parts", "cpu_us_per_window": out}


# --- report -----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("paho-mqtt", "SQLAlchemy", "psycopg"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    out = subprocess.run([mosq, "-h"], capture_output=True, text=True)
    versions["mosquitto"] = out.stdout.split("version", 1)[-1].split()[0] if out.stdout else None
    import sqlite3

    versions["sqlite"] = sqlite3.sqlite_version
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "versions": versions,
    }


FAKE_MODEL = {"name": "wrist", "version": 1, "variant": "tflite-int8", "sha256": "0" * 64}


def run_all(args: argparse.Namespace, modes: list[str], root: Path) -> list[dict[str, Any]]:
    broker = start_broker(root / "broker")
    drops = []
    setups: dict[str, dict[str, Any]] = {}
    try:
        base = make_baseline()
        stats = make_stats(base)
        size = len(make_messages("bench", 1, 1, FAKE_MODEL, stats)[0][1])
        print(
            f"{args.windows} windows of ~{size} bytes from {args.devices} devices, "
            f"{args.publishers} publisher processes; mosquitto on {broker.url}"
        )
        sqlite_url = f"sqlite:///{root / 'ws-sqlite' / 'edgeops.db'}"
        setups["bare"] = {"model": FAKE_MODEL}
        setups["sqlite"] = {"ws": open_workspace(root / "ws-sqlite", sqlite_url)}
        if not args.no_pg:
            url, drop = pg_database(args.pg)
            drops.append(drop)
            setups["postgres"] = {"ws": open_workspace(root / "ws-pg", url)}
        for setup in setups.values():
            setup.update(base=base, stats=stats, model=setup.get("model", FAKE_MODEL))
        kinds = ["bare"] + [
            db if n == 1 else f"{db}x{n}" for db in setups if db != "bare" for n in args.procs
        ]
        results = []
        for mode in modes:
            for _ in range(args.repeats):
                for kind in kinds:
                    r = measure(kind, mode, broker, args, setups[kind.split("x")[0]])
                    results.append(r)
                    extra = f"  stored {r['stored']}" if "stored" in r else ""
                    print(
                        f"{mode:8s} {kind:10s} {r['rate']:7.0f} msg/s ({r['seconds']:.2f} s), "
                        f"{r['cpu_us_per_message']:4.0f} us CPU/msg" + extra
                    )
        if args.parts:
            for _ in range(args.repeats):
                for kind in setups:
                    if kind != "bare":
                        results.append(parts(kind, broker, args, setups[kind]))
        return results
    finally:
        for setup in setups.values():
            if "ws" in setup:
                setup["ws"].close()
        broker.stop()
        for drop in drops:
            drop()


def summarize(results: list[dict[str, Any]], modes: list[str], windows: int) -> dict[str, Any]:
    summary: dict[str, Any] = {"ok": True}
    for mode in modes:
        kinds = sorted({r["consumer"] for r in results if r["mode"] == mode})
        rates = {
            k: statistics.median(
                r["rate"] for r in results if r["mode"] == mode and r["consumer"] == k
            )
            for k in kinds
        }
        cpu = {
            k: statistics.median(
                r["cpu_us_per_message"] for r in results if r["mode"] == mode and r["consumer"] == k
            )
            for k in kinds
        }
        summary[mode] = {"rates": rates, "cpu_us_per_message": cpu}
        for k in kinds:
            if k == "bare":
                continue
            ratio = rates[k] / rates["bare"]
            summary[mode][f"{k}_ratio"] = ratio
            summary[mode][f"{k}_cpu_ratio"] = cpu["bare"] / cpu[k]
            if k.startswith("sqlite"):
                passed = ratio >= TARGET
                summary[mode][f"{k}_pass"] = passed
                verdict = f"(target >= {TARGET}) {'PASS' if passed else 'MISS'}"
            else:
                verdict = "(reported)"
            print(
                f"{mode:8s} {k}/bare = {ratio:.2f} {verdict}; "
                f"CPU per message bare/{k} = {cpu['bare'] / cpu[k]:.2f}"
            )
    summary["ok"] = all(v for m in modes for k, v in summary[m].items() if k.endswith("_pass"))
    wrong = [r for r in results if "stored" in r and r["stored"] != windows]
    if wrong:
        summary["ok"] = False
        print(f"ERROR: {len(wrong)} runs stored another number of windows than was sent")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=20_000, help="telemetry windows per run")
    parser.add_argument("--devices", type=int, default=100, help="devices sending them")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--batch-size", type=int, default=500, help="collector batch size")
    parser.add_argument(
        "--collector-procs",
        default="1,2",
        help="collector processes in the shared group, e.g. 1,2 (each measured)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per consumer and mode")
    parser.add_argument("--modes", default="backlog,live", help="backlog, live or both")
    parser.add_argument("--pg", default=PG_DEFAULT, help="PostgreSQL server (admin URL)")
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--parts", action="store_true", help="also: where a collector's CPU goes, per thread"
    )
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.procs = [int(n) for n in args.collector_procs.split(",")]

    info = machine()
    print(f"{info['date']}  {info['cpu']}  {info['cores']} cores  load {info['load_1min']:.2f}")
    with tempfile.TemporaryDirectory(prefix="edgeops-bench-ingest-") as tmp:
        results = run_all(args, modes, Path(tmp))
    summary = summarize(results, modes, args.windows)
    if args.json:
        doc = {
            "machine": info,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "results": results,
            "summary": summary,
        }
        args.json.write_text(json.dumps(doc, indent=2))
    return 1 if args.check and not summary["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
