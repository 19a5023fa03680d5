"""The closed loop on one machine, for the demo and the loop's end-to-end tests.

:class:`ClosedLoop` puts the real parts together around one workspace and one MQTT
broker: a fleet of simulated devices (real agents, :class:`edgeops_agent.sim.SimulatedFleet`),
the telemetry collector in a thread, the rollout controller and the retraining
watcher. :class:`SensorFeed` plays the world the devices sense: it sends them
generated accelerometer windows (:func:`edgeops.datasets.sensor_windows`), drifted
on the devices it is told to drift, and posts the ground truth for every
prediction a device samples, as a person or a downstream system would.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .datasets import CHANNELS, sensor_windows

__all__ = ["ClosedLoop", "SensorFeed"]


class SensorFeed:
    """Predictions on every device that serves a model, ``rows`` at a time every
    ``interval`` seconds, and labels for the ones the devices sample."""

    def __init__(
        self,
        sim: Any,
        length: int = 64,
        seed: int = 100,
        rows: int = 8,
        interval: float = 0.1,
        n_per_class: int = 150,
    ) -> None:
        self.sim, self.length, self.seed = sim, length, seed
        self.rows, self.interval, self.n_per_class = rows, interval, n_per_class
        self.drift: dict[str, dict[str, Any]] = {}
        self._pools: dict[str, tuple[list[dict[str, Any]], list[str]]] = {}
        self._cursor: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        # (device, model ref) -> [predictions, correct]; the world's view of accuracy
        self.outcomes: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        self.labels_sent = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def inject(self, devices: list[str], drift: dict[str, Any] | None) -> None:
        """From now on ``devices`` sense drifted data (``drift`` as in sensor_windows;
        None: the plain data again)."""
        with self.lock:
            for d in devices:
                if drift:
                    self.drift[d] = drift
                else:
                    self.drift.pop(d, None)

    def _pool(self, drift: dict[str, Any] | None) -> tuple[list[dict[str, Any]], list[str]]:
        key = json.dumps(drift, sort_keys=True)
        if key not in self._pools:
            frame = sensor_windows(self.n_per_class, self.length, self.seed, drift=drift)
            cols = {a: [f"{a}_{i:03d}" for i in range(self.length)] for a in CHANNELS}
            values = {a: frame[c].to_numpy() for a, c in cols.items()}
            rows = [{a: values[a][i].tolist() for a in CHANNELS} for i in range(len(frame))]
            self._pools[key] = (rows, [str(x) for x in frame["label"]])
        return self._pools[key]

    def step(self) -> int:
        """One round over the devices; the predictions made."""
        made = 0
        for i, device in enumerate(self.sim.devices):
            agent = self.sim.agents[i]
            model = None if agent is None else agent.predictor.model
            if model is None:
                continue
            with self.lock:
                drift = self.drift.get(device)
            rows, labels = self._pool(drift)
            at = self._cursor[device] % (len(rows) - self.rows)
            self._cursor[device] = at + self.rows
            try:
                results = agent.predictor.predict_rows(rows[at : at + self.rows])
            except Exception:  # a device without a model, or mid-switch: the world goes on
                self.errors += 1
                continue
            ref = model.ref()
            key = (device, f"{ref['name']}@{ref['version']}")
            truth = labels[at : at + self.rows]
            with self.lock:
                out = self.outcomes[key]
                out[0] += len(results)
                out[1] += sum(r["label"] == y for r, y in zip(results, truth, strict=True))
            for r, y in zip(results, truth, strict=True):
                if "sample_id" in r:
                    agent.send_label(r["sample_id"], y)
                    self.labels_sent += 1
            made += len(results)
        return made

    def snapshot(self) -> dict[tuple[str, str], tuple[int, int]]:
        """The counts so far, to measure a phase from (``(device, ref) -> (n, correct)``)."""
        with self.lock:
            return {k: (v[0], v[1]) for k, v in self.outcomes.items()}

    def accuracy(
        self, model_ref: str, devices: list[str] | None = None
    ) -> tuple[int, float | None]:
        """Predictions of ``model_ref`` on ``devices`` (all if None) and their accuracy."""
        with self.lock:
            n = k = 0
            for (device, ref), (pn, pk) in self.outcomes.items():
                if ref == model_ref and (devices is None or device in devices):
                    n, k = n + pn, k + pk
        return n, (k / n if n else None)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.step()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> SensorFeed:
        self._thread = threading.Thread(target=self._run, name="sensor-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


class ClosedLoop:
    """Simulated devices, collector, controller and retraining watcher on one workspace."""

    def __init__(
        self,
        ws: Any,
        broker_url: str,
        key: Any,
        state_dir: Path,
        devices: int = 10,
        tags: Callable[[int], tuple[str, ...]] = lambda i: ("sim",),
        runtimes: tuple[str, ...] = ("onnxruntime",),
        window_count: int = 200,
        window_s: float = 2.0,
        samples_per_hour: float = 36_000,
        length: int = 64,
        reporter: Callable[[str], None] | None = None,
    ) -> None:
        from edgeops_agent.config import AgentConfig
        from edgeops_agent.sim import SimulatedFleet

        from .fleet.controller import RolloutController
        from .monitoring.collector import Collector, CollectorOptions
        from .monitoring.ingest import Ingestor
        from .mqtt import MqttClient
        from .retrain.watch import RetrainWatcher

        self.ws, self.key, self.say = ws, key, reporter or (lambda text: None)
        fleet = ws.settings.fleet
        base = AgentConfig(
            device="sim",
            fleet=fleet,
            state_dir=state_dir / "unused",
            public_keys=(key.public,),
            runtimes=runtimes,
            broker=broker_url,
            hardware="rpi4",
            telemetry_window_count=window_count,
            telemetry_window_s=window_s,
            samples_per_hour=samples_per_hour,
        )
        self.sim = SimulatedFleet(devices, base, state_dir / "devices", prefix="pi")
        self.sim.configs = [c.replace(tags=tags(i)) for i, c in enumerate(self.sim.configs)]
        self.client = MqttClient(broker_url).connect()
        self.collector = Collector(
            Ingestor(ws.db, fleet),
            broker_url,
            CollectorOptions(client_id=f"edgeops-loop-{fleet}"[:60], linger=0.05),
        )
        self._collector_thread: threading.Thread | None = None
        self.controller = RolloutController(ws, key, self.client)
        self.watcher = RetrainWatcher(
            ws, key, self.client, reporter=self.say, controller=self.controller
        )
        self.feed = SensorFeed(self.sim, length=length)

    @property
    def devices(self) -> list[str]:
        return self.sim.devices

    def start(self, timeout: float = 60.0) -> ClosedLoop:
        self.collector.start()
        self._collector_thread = threading.Thread(
            target=self.collector.run, kwargs={"report_every": 1e9}, daemon=True
        )
        self._collector_thread.start()
        self.sim.start()
        deadline = time.monotonic() + timeout
        while True:
            self.controller.fleet.sync(self.client, quiet=0.3)
            online = sum(d.online for d in self.controller.fleet.devices())
            if online >= len(self.sim):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{online} of {len(self.sim)} devices came online")
        self.say(f"{len(self.sim)} devices online")
        self.feed.start()
        return self

    def stop(self) -> None:
        self.feed.stop()
        self.sim.stop()
        self.collector.stop()
        if self._collector_thread is not None:
            self._collector_thread.join(30)
        self.collector.close()
        self.client.close()

    def rollout(self, ref: str, selector: str = "all", timeout: float = 180.0, **opts: Any):
        """Create and drive a rollout to its end; its final status and seconds taken."""
        from .fleet.controller import TERMINAL, RolloutOptions

        started = time.monotonic()
        rid = self.controller.create(ref, selector, RolloutOptions(**opts))
        self.say(f"rollout {rid}: {ref} to {selector}")
        self.drive(lambda: self.controller.status(rid)["status"] in TERMINAL, timeout)
        return self.controller.status(rid), time.monotonic() - started

    def drive(self, until: Callable[[], bool], timeout: float) -> None:
        """Run the controller (rollouts) until ``until()``; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise TimeoutError("the loop did not reach the expected state in time")
            self.controller.run(until=lambda: True, tick=0.25)

    def watch(self, until: Callable[[], bool], timeout: float, interval: float = 2.0) -> None:
        """Run the retraining watcher (which drives rollouts too) until ``until()``."""
        deadline = time.monotonic() + timeout
        next_tick = 0.0
        while not until():
            if time.monotonic() > deadline:
                raise TimeoutError("the loop did not reach the expected state in time")
            if time.monotonic() >= next_tick:
                self.watcher.tick()
                next_tick = time.monotonic() + interval
            self.controller.run(until=lambda: True, tick=0.25)

    def versions(self) -> dict[str, int | None]:
        """The version each device serves now."""
        out: dict[str, int | None] = {}
        for i, d in enumerate(self.sim.devices):
            agent = self.sim.agents[i]
            model = None if agent is None else agent.predictor.model
            out[d] = None if model is None else model.ref()["version"]
        return out
