"""Fake devices for the collector tests: a registered model with a baseline, and the state,
telemetry, sample and label messages a device of the protocol would publish; and, for the
monitoring tests, a real float model (``m@1``) with stored device states and windows."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from edgeops.dashboard.sample_data import label_message, telemetry_doc
from edgeops_protocol.baseline import baseline_profile
from edgeops_protocol.messages import state_message
from edgeops_protocol.stats import WindowStats
from edgeops_protocol.topics import device_topic

LABELS = ("idle", "walk", "run")
N_FEATURES = 3


def make_baseline(n_features: int = N_FEATURES, labels=LABELS, bins: int = 4) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, n_features))
    outputs = rng.dirichlet(np.ones(len(labels)), size=300)
    names = [f"f{j}" for j in range(n_features)]
    return baseline_profile(x, outputs, names, list(labels), bins=bins)


def register_model(ws: Any, name: str = "har", n_features: int = N_FEATURES, labels=LABELS):
    """A model version with a ``tflite-int8`` variant whose meta carries a baseline."""
    from edgeops.registry import NewVariant

    base = make_baseline(n_features, labels)
    meta = {"labels": list(labels), "baseline": base}
    blob = b"\0\0\0\0TFL3" + name.encode() * 20
    variant = NewVariant("tflite-int8", blob + b"int8", "tflite", {}, meta)
    return ws.registry.register(name, blob, "tflite", labels=list(labels), variants=[variant])


def model_of(mv: Any, variant: str = "tflite-int8") -> dict[str, Any]:
    v = next(v for v in mv.variants if v.name == variant)
    return {"name": mv.model.name, "version": mv.version, "variant": v.name, "sha256": v.sha256}


def state_payload(fleet: str, device: str, **override: Any) -> bytes:
    """A device's retained state message: online, no model; ``override`` replaces fields."""
    fields: dict[str, Any] = {
        "online": True,
        "boot": "b0",
        "ts": 0.0,
        "hardware": "rpi4",
        "runtimes": ["ai-edge-litert"],
        "accepted_seq": 0,
        "model": None,
        "previous": None,
        "tags": [],
    }
    fields.update(override)
    return state_message(fleet=fleet, device=device, **fields)


def state(fleet: str, device: str) -> tuple[str, bytes]:
    return device_topic(fleet, device, "state"), state_payload(fleet, device)


def window_stats(base: dict, n: int = 20, seed: int = 0) -> dict[str, Any]:
    """A real window: ``n`` predictions counted by the agent's own WindowStats."""
    rng = np.random.default_rng(seed)
    w = WindowStats(base)
    k = len(base["outputs"]["labels"])
    for _ in range(n):
        w.update(rng.normal(size=len(base["features"])), rng.dirichlet(np.ones(k)), 1.5)
    return w.window()


def window(
    fleet: str,
    device: str,
    seq: int,
    model: dict,
    base: dict,
    boot: str = "b0",
    n: int = 20,
    **override: Any,
) -> dict[str, Any]:
    stats = window_stats(base, n, seed=seq)
    start, end = 1_795_760_000.0 + 60 * seq, 1_795_760_060.0 + 60 * seq
    msg = telemetry_doc(fleet, device, seq, model, stats, start, end, boot=boot)
    msg.update(override)
    return msg


def telemetry(msg: dict[str, Any]) -> tuple[str, bytes]:
    return device_topic(msg["fleet"], msg["device"], "telemetry"), json.dumps(msg).encode()


def sample(
    fleet: str, device: str, seq: int, model: dict, predicted: str = "walk", boot: str = "b0"
) -> tuple[str, bytes]:
    msg = {
        "protocol": 1,
        "type": "sample",
        "fleet": fleet,
        "device": device,
        "boot": boot,
        "seq": seq,
        "ts": 1_795_760_000.0 + seq,
        "sample_id": f"{device}/{boot}/{seq}",
        "model": model,
        "input": {"ax": [0.1, 0.2], "ay": [0.0, 0.1], "az": [1.0, 0.9]},
        "features": [0.1] * N_FEATURES,
        "outputs": [0.2, 0.5, 0.3],
        "predicted": predicted,
    }
    return device_topic(fleet, device, "samples"), json.dumps(msg).encode()


def label(fleet: str, device: str, sample_id: str, value: str) -> tuple[str, bytes]:
    return label_message(fleet, device, sample_id, value, 1_795_760_100.0)


# --- a real float model and stored telemetry, for the monitoring service ------------------------

FLOAT_FEATURES = ["a", "b", "c"]
FLOAT_LABELS = ["x", "y"]


def float_model():
    """Logistic regression on a seeded dataset: the label depends on a and b, not on c."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 3))
    y = (X[:, 0] + 0.5 * X[:, 1] + 0.3 * rng.normal(size=1000) > 0).astype(int)
    return LogisticRegression().fit(X, y), X


def register_float_model(ws: Any, variants: list[tuple[str, bytes, str, dict]]):
    """``m@1``: the :func:`float_model` as the original (skops) and ``variants``, each given as
    (name, blob, format, metrics) and each with the same meta: the baseline, labels and feature
    names. Returns (model version, float model, baseline)."""
    from edgeops.model_io import save_sklearn
    from edgeops.registry import NewVariant

    model, X = float_model()
    baseline = baseline_profile(X, model.predict_proba(X), FLOAT_FEATURES, FLOAT_LABELS)
    meta = {"baseline": baseline, "labels": FLOAT_LABELS, "feature_names": FLOAT_FEATURES}
    mv = ws.registry.register(
        "m",
        save_sklearn(model),
        "skops",
        metrics={"accuracy": 0.9},
        labels=FLOAT_LABELS,
        variants=[
            NewVariant(name, blob, fmt, metrics, meta) for name, blob, fmt, metrics in variants
        ],
    )
    return mv, model, baseline


def apply_states(db: Any, fleet: str, tags: dict[str, list[str]]) -> None:
    """Each device of ``tags`` online in the fleet store (boot ``b``, onnxruntime), tagged."""
    from edgeops.fleet.store import FleetStore

    store = FleetStore(db, fleet)
    for device, device_tags in tags.items():
        payload = state_payload(
            fleet,
            device,
            boot="b",
            runtimes=["onnxruntime"],
            accepted_seq=1,
            tags=device_tags,
        )
        store.apply_state(json.loads(payload))


def model_window(
    baseline: dict,
    predict: Any,
    rng: np.random.Generator,
    n: int,
    shift: float = 0.0,
    column: int = 2,
    latency_ms: float = 0.5,
) -> dict[str, Any]:
    """A window of ``n`` normal inputs (``column`` shifted by ``shift``) scored by ``predict``."""
    stats = WindowStats(baseline)
    X = rng.normal(size=(n, 3))
    X[:, column] += shift
    for x, o in zip(X, predict(X), strict=True):
        stats.update(x, o, latency_ms=latency_ms)
    return stats.window()


def stored_window(
    fleet: str,
    device: str,
    seq: int,
    model_ref: str,
    variant: str,
    stats: dict,
    start: float,
    end: float,
):
    """The store's row of one telemetry window (boot ``b``, a zero sha256)."""
    from edgeops.store.schema import TelemetryWindow

    return TelemetryWindow(
        fleet=fleet,
        device_id=device,
        boot="b",
        seq=seq,
        model_ref=model_ref,
        variant=variant,
        sha256="0" * 64,
        start=start,
        end=end,
        count=stats["count"],
        stats=stats,
    )
