"""The end-to-end demo on embedded defaults: the whole loop on one machine.

:func:`run_demo` trains: a generated sensor data set is versioned, a feature
definition registered, a pipeline trains a Keras model, quantizes it to TFLite,
TFLite Micro and ONNX variants measured in their runtimes, registers it and
points ``production`` at it.

:func:`run_loop_demo` then runs the loop around it (``edgeops demo``): an MQTT
broker (the configured one, else one it starts), simulated Raspberry Pi agents
(the real agent code), a staged rollout, live telemetry into the collector, a
sensor fault injected into half of the fleet, the drift alert, retraining on the
fleet's labelled samples, challenger against champion, and the canary rollout of
the better model under quality gates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEMO_FEATURES",
    "DEMO_PIPELINE",
    "DemoResult",
    "LoopDemoResult",
    "run_demo",
    "run_loop_demo",
]

AXES = ("ax", "ay", "az")
DEMO_FEATURES: dict[str, Any] = {
    "name": "wrist",
    "description": "accelerometer window statistics and FFT band energies",
    "tags": ["imu", "har", "demo"],
    "inputs": [{"name": a, "kind": "window", "length": 64} for a in AXES],
    "steps": [
        *({"op": "window_stats", "input": a} for a in AXES),
        *({"op": "fft_bands", "input": a, "bands": 4} for a in AXES),
        {"op": "scale", "method": "standard"},
    ],
}
DEMO_PIPELINE = """\
name: wrist-har
description: activity classifier on wrist accelerometer windows (edgeops demo)
data: sensors@1
label: label
features: wrist@1
split: {test_size: 0.25, seed: 42, stratify: true}
model:
  kind: keras_mlp
  params: {hidden: [64, 32], epochs: 40}
  seed: 0
export: [tflite-f32, tflite-int8, c-tflm, onnx-f32, onnx-int8]
calibration: {samples: 300, seed: 0}
gates:
  min_accuracy: 0.85
  max_accuracy_drop: 0.02
  min_agreement: 0.97
alias: production
"""


@dataclass
class DemoResult:
    workspace: Path
    dataset: str
    features: str
    run_id: str
    model: str
    metrics: dict[str, Any]
    variants: dict[str, dict[str, Any]]


def run_demo(
    folder: Path,
    reporter: Any = None,
    seed: int = 0,
    mqtt_url: str | None = None,
    fleet: str | None = None,
) -> DemoResult:
    """Train the demo's model in ``folder`` (a workspace is created there)."""
    import yaml

    from .datasets import sensor_windows, write_table
    from .errors import GateFailed
    from .pipeline import parse_pipeline
    from .pipeline.run import QuietReporter, run_pipeline
    from .workspace import Workspace

    rep = reporter or QuietReporter()
    folder = Path(folder)
    ws, _ = Workspace.init(folder, mqtt_url=mqtt_url, fleet=fleet)
    try:
        path = folder / "data" / "sensors.csv"
        write_table(sensor_windows(n_per_class=250, seed=seed), path)
        dv = ws.data.add(path, "sensors", message=f"generated sensor windows, seed {seed}").version
        rep.step("data add", f"{dv.ref}: {dv.rows} windows of 3×64 samples")
        (folder / "features").mkdir(exist_ok=True)
        spec_path = folder / "features" / "wrist.yaml"
        spec_path.write_text(yaml.safe_dump(DEMO_FEATURES, sort_keys=False))
        fv, _ = ws.features.add(spec_path)
        rep.step("features add", f"{fv.ref}")
        (folder / "pipelines").mkdir(exist_ok=True)
        pipe_path = folder / "pipelines" / "wrist-har.yaml"
        pipe_path.write_text(DEMO_PIPELINE)
        result = run_pipeline(ws, parse_pipeline(yaml.safe_load(DEMO_PIPELINE), DEMO_PIPELINE), rep)
        if result.status == "gated":
            raise GateFailed("; ".join(result.gate_failures))
        return DemoResult(
            folder,
            dv.ref,
            fv.ref,
            result.run_id,
            str(result.model_ref),
            result.metrics,
            result.variants,
        )
    finally:
        ws.close()


DEMO_POLICY = """\
model: wrist-har
champion: production
triggers:
  alerts: [drift]
data:
  from_samples: true
  holdout: 0.3
  min_new_samples: 800
evaluation:
  min_improvement: 0.0
action: canary
promote: production
cooldown: 10m
rollout:
  target: all
  stages: [25, 100]
  stage_wait: 5s
  max_failures: 10
  timeout: 60s
  gates: [error_rate<=0.02, p95_latency_ms<=50]
  gate_min_count: 300
"""
SENSOR_FAULT = {"gain": {"ax": 2.5}}  # the south devices' x axis reads 2.5 times too high


@dataclass
class LoopDemoResult:
    workspace: Path
    broker: str
    fleet: str
    devices: list[str]
    drifted: list[str]
    versions: list[dict[str, Any]]
    rollouts: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    drift: list[dict[str, Any]]
    accuracy: list[dict[str, Any]]
    serving: dict[str, int | None]
    seconds: float


def _max_psi(svc: Any, ref: str, scope: str, since: float | None) -> dict[str, Any]:
    rep = svc.report(ref, scope=scope, since=since)
    for name, v in rep["variants"].items():
        feats = v["report"]["features"]
        top = max(feats, key=lambda f: f["psi"]) if feats else None
        return {
            "model": ref,
            "scope": scope,
            "variant": name,
            "predictions": v["report"]["count"],
            "max_psi": top["psi"] if top else None,
            "feature": top["name"] if top else None,
            "flagged": len(v["rule"]["flagged"]),
        }
    return {"model": ref, "scope": scope, "predictions": 0, "max_psi": None, "flagged": 0}


def run_loop_demo(
    folder: Path,
    say: Any = print,
    reporter: Any = None,
    seed: int = 0,
    devices: int = 12,
    mqtt_url: str | None = None,
    steady_s: float = 8.0,
    after_s: float = 8.0,
    timeout: float = 240.0,
    on_ready: Any = None,
) -> LoopDemoResult:
    """The whole loop in ``folder``; ``say(text)`` is told what happens as it happens.

    ``on_ready(ws, loop)``, if given, runs at the end with the fleet still running (the
    CLI serves the dashboard there with ``--serve``)."""
    import secrets
    import time

    from .fleet.keys import generate_key
    from .localbroker import reachable, start_broker
    from .retrain import set_policy
    from .workspace import Workspace

    t0 = time.monotonic()

    def note(text: str) -> None:
        say(f"[{time.monotonic() - t0:6.1f}s] {text}")

    folder = Path(folder)
    if (folder / "edgeops.toml").exists():
        from .errors import Conflict

        raise Conflict(f"{folder} already holds a workspace; give the demo a new --dir")
    import os

    default = os.environ.get("EDGEOPS_MQTT_URL") or "mqtt://127.0.0.1:1883"
    url = mqtt_url or default
    broker = None
    if mqtt_url is None and not reachable(url):
        broker = start_broker(folder / "broker", persistence=False)
        note(f"no MQTT broker at {url}: started {broker.kind} at {broker.url}")
        url = broker.url
    elif not reachable(url):
        from .errors import BrokerUnavailable

        raise BrokerUnavailable(f"no MQTT broker answers at {url}; start one or omit --mqtt-url")
    else:
        note(f"using the MQTT broker at {url}")
    fleet = f"demo-{secrets.token_hex(3)}"
    try:
        trained = run_demo(folder, reporter, seed=seed, mqtt_url=url, fleet=fleet)
        note(f"trained {trained.model} (production), accuracy {trained.metrics['accuracy']:.3f}")
        ws = Workspace.open(folder)
        try:
            key = generate_key(ws.settings.keys_dir)
            (folder / "policies").mkdir(exist_ok=True)
            (folder / "policies" / "wrist-har.yaml").write_text(DEMO_POLICY)
            set_policy(ws, folder / "policies" / "wrist-har.yaml")
            note("retraining policy: drift alert -> retrain on fleet samples -> canary")
            return _loop(
                ws, url, key, folder, fleet, devices, (steady_s, after_s, timeout), note, on_ready
            )
        finally:
            ws.close()
    finally:
        if broker is not None:
            broker.stop()


def _loop(
    ws: Any,
    url: str,
    key: Any,
    folder: Path,
    fleet: str,
    devices: int,
    times: tuple[float, float, float],
    note: Any,
    on_ready: Any,
) -> LoopDemoResult:
    import time

    from .loop import ClosedLoop
    from .monitoring.service import MonitoringService
    from .retrain import decisions

    steady_s, after_s, timeout = times
    t0 = time.monotonic()

    half = devices // 2
    loop = ClosedLoop(
        ws,
        url,
        key,
        folder / "fleet",
        devices=devices,
        tags=lambda i: ("pi", "north") if i < half else ("pi", "south"),
        runtimes=("ai-edge-litert",),
        window_count=250,
        window_s=2.0,
        samples_per_hour=36_000,
        reporter=note,
    )
    loop.start()
    try:
        rollouts = []
        st, secs = loop.rollout("wrist-har@1", "all", stages=(0.25, 1.0), timeout=60)
        rollouts.append(
            {
                "id": st["rollout"],
                "model": st["model"],
                "status": st["status"],
                "devices": st["devices"],
                "seconds": secs,
            }
        )
        note(
            f"rollout {st['rollout']} {st['status']}: {st['counts']['activated']} devices "
            f"on wrist-har@1 in {secs:.1f}s"
        )
        south = loop.devices[half:]
        time.sleep(steady_s)
        before = loop.feed.snapshot()
        n = MonitoringService(ws).store.window_count("wrist-har@1")
        note(f"telemetry: {n} windows stored; devices predicting, sampling and labelled")
        t_drift = time.time()
        loop.feed.inject(south, SENSOR_FAULT)
        note(f"sensor fault injected on {len(south)} south devices: x axis gain 2.5")
        loop.watch(
            lambda: any(d["status"] != "canary" for d in decisions(ws, "wrist-har")),
            timeout=timeout,
        )
        for d in decisions(ws, "wrist-har"):
            if d["rollout"]:
                s2 = loop.controller.status(d["rollout"])
                rollouts.append(
                    {
                        "id": s2["rollout"],
                        "model": s2["model"],
                        "status": s2["status"],
                        "devices": s2["devices"],
                        # from the decision (the canary's start) to its settling
                        "seconds": (d["updated_at"] - d["created_at"]).total_seconds(),
                        "gates": s2.get("verdicts", []),
                    }
                )
        mark = loop.feed.snapshot()
        time.sleep(after_s)
        svc = MonitoringService(ws)
        champion = ws.registry.get_version("wrist-har@production").ref
        drift = [
            _max_psi(svc, "wrist-har@1", "tag:south", None if not before else t_drift),
            _max_psi(svc, "wrist-har@1", "tag:north", t_drift),
        ]
        if champion != "wrist-har@1":
            drift.append(_max_psi(svc, champion, "tag:south", None))
        accuracy = _accuracies(loop, before, mark, south, champion)
        if on_ready is not None:
            on_ready(ws, loop)
        return LoopDemoResult(
            workspace=folder,
            broker=url,
            fleet=fleet,
            devices=list(loop.devices),
            drifted=list(south),
            versions=[_version_row(ws, v) for v in ws.registry.versions("wrist-har")],
            rollouts=rollouts,
            decisions=decisions(ws, "wrist-har"),
            drift=drift,
            accuracy=accuracy,
            serving=loop.versions(),
            seconds=time.monotonic() - t0,
        )
    finally:
        loop.stop()


def _version_row(ws: Any, mv: Any) -> dict[str, Any]:
    aliases = ws.registry.aliases_of(mv.model.name)
    return {
        "ref": mv.ref,
        "aliases": sorted(a for a, v in aliases.items() if v == mv.version),
        "data": mv.dataset_version.ref if mv.dataset_version else None,
        "rows": mv.dataset_version.rows if mv.dataset_version else None,
        "accuracy": mv.metrics.get("accuracy"),
    }


def _accuracies(loop: Any, before: dict, mark: dict, south: list[str], champion: str) -> list:
    """Ground-truth accuracy per phase and group, from what the simulated world knows."""
    now = loop.feed.snapshot()

    def acc(snap_a: dict, snap_b: dict, ref: str, devs: list[str]) -> tuple[int, float | None]:
        n = k = 0
        for (d, r), (pn, pk) in snap_b.items():
            if r == ref and d in devs:
                a = snap_a.get((d, r), (0, 0))
                n, k = n + pn - a[0], k + pk - a[1]
        return n, (k / n if n else None)

    north = [d for d in loop.devices if d not in south]
    rows = []
    for phase, a, b, ref in (
        ("before the fault", {}, before, "wrist-har@1"),
        ("fault, old model", before, mark, "wrist-har@1"),
        ("fault, new model", mark, now, champion),
    ):
        for group, devs in (("south (faulty)", south), ("north", north)):
            n, value = acc(a, b, ref, devs)
            rows.append(
                {"phase": phase, "group": group, "model": ref, "predictions": n, "accuracy": value}
            )
    return rows
