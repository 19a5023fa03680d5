"""Fake devices for the collector tests: a registered model with a baseline, and the state,
telemetry, sample and label messages a device of the protocol would publish."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

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


def state(fleet: str, device: str) -> tuple[str, bytes]:
    payload = state_message(
        fleet=fleet,
        device=device,
        online=True,
        boot="b0",
        ts=0.0,
        hardware="rpi4",
        runtimes=["ai-edge-litert"],
        accepted_seq=0,
        model=None,
        previous=None,
        tags=[],
    )
    return device_topic(fleet, device, "state"), payload


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
    msg = {
        "protocol": 1,
        "type": "telemetry",
        "fleet": fleet,
        "device": device,
        "boot": boot,
        "seq": seq,
        "start": 1_795_760_000.0 + 60 * seq,
        "end": 1_795_760_060.0 + 60 * seq,
        "model": model,
        "stats": window_stats(base, n, seed=seq),
    }
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
    msg = {
        "protocol": 1,
        "type": "label",
        "fleet": fleet,
        "device": device,
        "sample_id": sample_id,
        "label": value,
        "ts": 1_795_760_100.0,
    }
    return device_topic(fleet, device, "labels"), json.dumps(msg).encode()
