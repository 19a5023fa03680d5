"""A demo fleet with telemetry: what the dashboard screenshot and the dashboard tests show.

:func:`build_sample_fleet` fills a workspace through the library's own doors, as a real
fleet would: a model registered with a baseline profile; device states, telemetry windows
counted by the agent's own ``WindowStats``, sampled predictions and labels, all given to the
collector's :class:`~edgeops.monitoring.ingest.Ingestor` as the MQTT messages devices
publish; a staged rollout driven by the rollout controller over an in-memory transport; and
the alert rules evaluated on the result. The input ``ax_mean`` drifts on the ``south``
devices in the second half of the time range. Everything is fixed by ``seed`` and ``now``.

The smaller pieces (:func:`register_model`, :func:`window_stats`, the message builders)
are for tests that need to know exactly what was stored; :func:`serving` runs an app in a
background thread for the browser tests and the screenshot script.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeops_protocol.baseline import baseline_profile
from edgeops_protocol.messages import event_message, state_message
from edgeops_protocol.stats import WindowStats
from edgeops_protocol.topics import device_topic

__all__ = [
    "DEVICES",
    "DRIFTED",
    "FEATURES",
    "LABELS",
    "MODEL",
    "VARIANT",
    "DemoModel",
    "SampleFleet",
    "build_sample_fleet",
    "register_model",
    "sample_message",
    "serving",
    "state",
    "telemetry_doc",
    "telemetry_message",
    "window_stats",
]

MODEL = "har"
VARIANT = "tflite-int8"
FEATURES = ("ax_mean", "ax_std", "ay_mean", "az_mean", "gyro_energy", "temp_c")
LABELS = ("idle", "walk", "run")
DRIFTED = "ax_mean"
DRIFT_SHIFT = 1.5  # standard deviations added to DRIFTED on the drifting devices
#: device -> tag; the "south" devices drift, pi-06 ends offline
DEVICES = {
    "pi-01": "north",
    "pi-02": "north",
    "pi-03": "north",
    "pi-04": "north",
    "pi-05": "south",
    "pi-06": "south",
}
OFFLINE = ("pi-06",)
BOOT = "b1"
# the true activity of a row: argmax of x @ _TRUTH (plus noise); the model learns it
_TRUTH = np.array(
    [
        [-1.2, 0.3, 1.1],
        [-1.0, 0.8, 0.9],
        [0.2, -0.4, 0.3],
        [0.1, 0.2, -0.3],
        [-0.9, 0.1, 1.2],
        [0.0, 0.0, 0.0],
    ]
)


@dataclass
class DemoModel:
    """The registered versions, the baseline of their variant, and the model's scores."""

    versions: list[Any]
    baseline: dict[str, Any]
    predict: Callable[[np.ndarray], np.ndarray]  # rows -> class probabilities

    @property
    def ref(self) -> str:
        return self.versions[0].ref

    def model_of(self, version: int = 1) -> dict[str, Any]:
        """The ``model`` field of a device's messages for ``version``'s variant."""
        mv = self.versions[version - 1]
        v = next(v for v in mv.variants if v.name == VARIANT)
        return {"name": mv.model.name, "version": mv.version, "variant": v.name, "sha256": v.sha256}


def rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` rows of the six features: standard normal, but ``temp_c``, which a thermometer
    reads in whole degrees around 24 (so its baseline has fewer distinct bins)."""
    x = rng.normal(size=(n, len(FEATURES)))
    t = FEATURES.index("temp_c")
    x[:, t] = 24.0 + np.round(1.5 * x[:, t])
    return x


def _truth(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.argmax(x @ _TRUTH + rng.normal(scale=0.5, size=(len(x), len(LABELS))), axis=1)


def register_model(ws: Any, name: str = MODEL, versions: int = 2, seed: int = 0) -> DemoModel:
    """Register ``versions`` versions of a scikit-learn classifier of the six features, each
    with a ``tflite-int8`` variant whose meta carries the baseline profile of 2,000 rows."""
    from sklearn.linear_model import LogisticRegression

    from ..model_io import save_sklearn
    from ..registry import NewVariant

    rng = np.random.default_rng(seed)
    x = rows(rng, 2600)
    y = _truth(x, rng)
    train, test = slice(0, 2000), slice(2000, None)
    clf = LogisticRegression(max_iter=500).fit(x[train], y[train])
    baseline = baseline_profile(x[train], clf.predict_proba(x[train]), FEATURES, LABELS)
    accuracy = round(float(clf.score(x[test], y[test])), 4)
    meta = {
        "labels": list(LABELS),
        "feature_names": list(FEATURES),
        "baseline": baseline,
        "quantization": "int8",
    }
    out = []
    for k in range(versions):
        blob = b"\0\0\0\0TFL3" + f"{name}-{k + 1}-int8".encode() * 40  # opaque to the server
        variant = NewVariant(VARIANT, blob, "tflite", {"accuracy": accuracy}, meta)
        out.append(
            ws.registry.register(
                name,
                save_sklearn(clf),
                "skops",
                labels=list(LABELS),
                metrics={"accuracy": accuracy},
                description="activity from wrist accelerometer features (demo)",
                variants=[variant],
            )
        )
    return DemoModel(out, baseline, clf.predict_proba)


def quantized(p: np.ndarray) -> np.ndarray:
    """Scores as an int8 model returns them: steps of 1/255."""
    return np.round(np.asarray(p) * 255) / 255


def window_stats(
    model: DemoModel,
    rng: np.random.Generator,
    n: int = 250,
    shift: Mapping[str, float] | None = None,
    latency_ms: float = 3.0,
) -> tuple[dict[str, Any], np.ndarray]:
    """A real window of ``n`` predictions (the agent's ``WindowStats``) and its input rows;
    ``shift`` adds a constant to named features."""
    x = rows(rng, n)
    for feature, delta in (shift or {}).items():
        x[:, FEATURES.index(feature)] += delta
    outputs = quantized(model.predict(x))
    latency = rng.lognormal(np.log(latency_ms), 0.35, size=n)
    w = WindowStats(model.baseline)
    for row, out, lat in zip(x, outputs, latency, strict=True):
        w.update(row, out, float(lat))
    return w.window(), x


# --- the messages a device publishes ------------------------------------------------------


def state(
    fleet: str,
    device: str,
    *,
    tags: Sequence[str] = (),
    model: dict[str, Any] | None = None,
    online: bool = True,
    accepted_seq: int = 0,
    ts: float = 0.0,
) -> tuple[str, bytes]:
    if not online:
        payload = state_message(fleet=fleet, device=device, online=False, ts=ts)
    else:
        payload = state_message(
            fleet=fleet,
            device=device,
            online=True,
            boot=BOOT,
            ts=ts,
            hardware="rpi4",
            runtimes=["ai-edge-litert"],
            accepted_seq=accepted_seq,
            model=model,
            previous=None,
            tags=list(tags),
            agent="0.1.0",
        )
    return device_topic(fleet, device, "state"), payload


def telemetry_doc(
    fleet: str,
    device: str,
    seq: int,
    model: dict[str, Any],
    stats: dict[str, Any],
    start: float,
    end: float,
    boot: str = BOOT,
) -> dict[str, Any]:
    """The telemetry message of one window, before it is encoded."""
    return {
        "protocol": 1,
        "type": "telemetry",
        "fleet": fleet,
        "device": device,
        "boot": boot,
        "seq": seq,
        "start": start,
        "end": end,
        "model": model,
        "stats": stats,
    }


def telemetry_message(
    fleet: str,
    device: str,
    seq: int,
    model: dict[str, Any],
    stats: dict[str, Any],
    start: float,
    end: float,
) -> tuple[str, bytes]:
    msg = telemetry_doc(fleet, device, seq, model, stats, start, end)
    return device_topic(fleet, device, "telemetry"), json.dumps(msg).encode()


def sample_message(
    fleet: str,
    device: str,
    seq: int,
    model: dict[str, Any],
    features: Sequence[float],
    outputs: Sequence[float],
    ts: float,
) -> tuple[str, bytes]:
    msg = {
        "protocol": 1,
        "type": "sample",
        "fleet": fleet,
        "device": device,
        "boot": BOOT,
        "seq": seq,
        "ts": ts,
        "sample_id": f"{device}/{BOOT}/{seq}",
        "model": model,
        "input": None,
        "features": [round(float(v), 6) for v in features],
        "outputs": [float(v) for v in outputs],
        "predicted": LABELS[int(np.argmax(outputs))],
    }
    return device_topic(fleet, device, "samples"), json.dumps(msg).encode()


def label_message(
    fleet: str, device: str, sample_id: str, label: str, ts: float
) -> tuple[str, bytes]:
    msg = {
        "protocol": 1,
        "type": "label",
        "fleet": fleet,
        "device": device,
        "sample_id": sample_id,
        "label": label,
        "ts": ts,
    }
    return device_topic(fleet, device, "labels"), json.dumps(msg).encode()


# --- the whole fleet ----------------------------------------------------------------------


@dataclass
class SampleFleet:
    """What :func:`build_sample_fleet` stored."""

    model: str  # NAME@VERSION the telemetry is of
    variant: str
    features: tuple[str, ...]
    drifted: str
    devices: dict[str, str]  # device -> tag
    online: int
    windows: int  # stored telemetry windows
    samples: int
    rollout: str | None
    alerts_opened: int
    rejected: dict[str, int] = field(default_factory=dict)


class _Transport:
    """The rollout controller's MQTT client, in memory: it keeps what is published and
    hands the controller the devices' replies queued in ``inbox``."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bool]] = []
        self.inbox: list[Any] = []

    def subscribe(self, topic: str, qos: int = 1) -> None:
        pass

    def publish_all(self, items: Any, timeout: float = 60.0) -> None:
        self.published.extend(items)

    def drain(self, timeout: float) -> Any:
        items, self.inbox = self.inbox, []
        yield from items

    def manifests(self) -> dict[str, dict[str, Any]]:
        out = {}
        for topic, payload, _ in self.published:
            if topic.endswith("/desired"):
                m = json.loads(payload)["manifest"]
                out[m["device"]] = m
        return out


def _rollout(ws: Any, model: DemoModel, now: float) -> tuple[str, dict[str, int]]:
    """Roll version 2 out to the north devices in two stages; the first stage activates.
    Returns the rollout id and the manifest seq each activated device accepted."""
    from ..errors import NotFound
    from ..fleet.controller import RolloutController, RolloutOptions
    from ..fleet.keys import generate_key, load_key
    from ..mqtt import Message

    try:
        key = load_key(ws.settings.keys_dir)
    except NotFound:
        key = generate_key(ws.settings.keys_dir)
    transport = _Transport()
    ctl = RolloutController(ws, key, transport, clock=lambda: now)
    rid = ctl.create(
        f"{model.versions[1].ref}", "tag:north", RolloutOptions(stages=(0.5, 1.0), timeout=3600)
    )
    ctl.run(max_seconds=0)
    first = transport.manifests()
    fleet = ws.settings.fleet
    for device, m in first.items():
        payload = event_message(
            fleet=fleet,
            device=device,
            boot=BOOT,
            ts=now,
            seq=m["seq"],
            deployment=m["deployment"],
            rollout=rid,
            event="activated",
        )
        transport.inbox.append(Message(device_topic(fleet, device, "events"), payload, False))
    ctl.run(max_seconds=0)  # the first stage is done: the second starts deploying
    return rid, {d: m["seq"] for d, m in first.items()}


def build_sample_fleet(
    ws: Any,
    *,
    now: float,
    seed: int = 0,
    windows: int = 24,
    period: float = 300.0,
    per_window: int = 250,
    rollout: bool = True,
) -> SampleFleet:
    """Fill ``ws`` with the demo fleet: six devices sending ``windows`` windows of
    ``per_window`` predictions each, one every ``period`` seconds up to ``now``."""
    from ..monitoring.ingest import Ingestor
    from ..monitoring.service import MonitoringService

    fleet = ws.settings.fleet
    model = register_model(ws, seed=seed)
    ws.registry.set_alias(model.ref, "production")
    rng = np.random.default_rng(seed + 1)
    ingest = Ingestor(ws.db, fleet)
    v1 = model.model_of(1)
    ingest.ingest(
        state(
            fleet, d, tags=[tag], model={**v1, "seq": 1}, accepted_seq=1, ts=now - windows * period
        )
        for d, tag in DEVICES.items()
    )
    messages: list[tuple[str, bytes]] = []
    samples: list[tuple[str, str]] = []  # (device, sample id)
    truths: dict[str, str] = {}
    for k in range(windows):
        end = now - (windows - 1 - k) * period
        for i, (device, tag) in enumerate(DEVICES.items()):
            shift = {DRIFTED: DRIFT_SHIFT} if tag == "south" and k >= windows // 2 else None
            stats, x = window_stats(model, rng, per_window, shift=shift, latency_ms=2.0 + 0.5 * i)
            messages.append(telemetry_message(fleet, device, k + 1, v1, stats, end - period, end))
            if k % 4 == 3:  # one sampled prediction every fourth window
                row = x[:1]
                seq = k + 1
                messages.append(
                    sample_message(
                        fleet, device, seq, v1, row[0], quantized(model.predict(row))[0], end - 1
                    )
                )
                sid = f"{device}/{BOOT}/{seq}"
                samples.append((device, sid))
                truths[sid] = LABELS[int(_truth(row, rng)[0])]
    messages.append((device_topic(fleet, "pi-03", "telemetry"), b"{not json"))
    messages.append(
        telemetry_message(fleet, "pi-99", 1, v1, window_stats(model, rng, 10)[0], now - 60, now)
    )
    ingest.ingest(messages)
    labels = [
        label_message(fleet, device, sid, truths[sid], now)
        for j, (device, sid) in enumerate(samples)
        if j % 3 != 2  # two samples in three get a label
    ]
    ingest.ingest(labels)
    rid, activated = _rollout(ws, model, now) if rollout else (None, {})
    v2 = model.model_of(2)
    ingest.ingest(
        state(
            fleet,
            d,
            tags=[DEVICES[d]],
            model={**v2, "seq": seq, "activated_at": now},
            accepted_seq=seq,
            ts=now,
        )
        for d, seq in activated.items()
    )
    ingest.ingest(state(fleet, d, online=False, ts=now) for d in OFFLINE)
    changes = MonitoringService(ws).evaluate_alerts(
        model.ref, scopes=["fleet", *sorted({f"tag:{t}" for t in DEVICES.values()})]
    )
    svc = MonitoringService(ws)
    return SampleFleet(
        model=model.ref,
        variant=VARIANT,
        features=FEATURES,
        drifted=DRIFTED,
        devices=dict(DEVICES),
        online=len(DEVICES) - len(OFFLINE),
        windows=svc.store.window_count(model.ref),
        samples=len(samples),
        rollout=rid,
        alerts_opened=sum(1 for c in changes if c.action == "open"),
        rejected=svc.store.counters(),
    )


@contextmanager
def serving(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread on a free port; yields its URL.

    The listening socket is bound before the server starts, so the port cannot be taken
    in between."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
