"""Helpers of the fault campaign: agent processes, what a state directory would serve, the
demo model in a registry, figures.

Agents run as real ``python -m edgeops_agent run --config`` processes where a test kills
them; elsewhere the real :class:`~edgeops_agent.agent.Agent` runs in the test's process
(as in tests/test_agent_mqtt.py), so the test can predict with it and read its counters.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgeops_protocol.baseline import baseline_profile
from test_agent_kit import FEATURES, Model, onnx_model
from test_agent_kit import wait_until as _wait_until

LABELS = ["no", "yes"]


def figure(text: str) -> str:
    """Print a figure of the campaign on a line of its own (run pytest with -s to see it)."""
    print(f"\n{text}", flush=True)
    return text


def wait_until(cond: Any, timeout: float = 30.0, what: str = "condition", every: float = 0.02):
    """:func:`test_agent_kit.wait_until` with the campaign's 30 s default."""
    return _wait_until(cond, timeout, what, every)


def baseline() -> dict:
    """Quantile bins over the demo models' standardized inputs, and their two classes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, len(FEATURES)))
    return baseline_profile(x, rng.dirichlet([1, 1], 500), FEATURES, LABELS, bins=5)


def register_demo(ws: Any, seeds: tuple[int, ...] = (0, 1)) -> list[Any]:
    """``demo`` v1, v2, ... in ``ws``'s registry, one ONNX model (test_agent_kit) each, with
    an ``onnx-f32`` variant carrying what a manifest and the collector need."""
    from edgeops.registry import NewVariant

    versions = []
    for seed in seeds:
        m = onnx_model(seed)
        meta = {
            "labels": LABELS,
            "feature_names": FEATURES,
            "features": m.features,
            "baseline": baseline(),
            "test_vectors": {
                "inputs": m.matrix[:4].tolist(),
                "outputs": m.probabilities[:4].tolist(),
            },
        }
        variant = NewVariant("onnx-f32", m.data, "onnx", {"latency_ms_p95": 1.0}, meta)
        versions.append(
            ws.registry.register("demo", m.data, "onnx", labels=LABELS, variants=[variant])
        )
    return versions


def agent_values(device: str, fleet: str, broker: Any, public_key: bytes, **over: Any) -> dict:
    """The settings of a test agent (as tests/test_agent_kit.py's ``agent_config``)."""
    return {
        "device": device,
        "fleet": fleet,
        "state_dir": "state",
        "broker": broker.url,
        "public_keys": [base64.b64encode(public_key).decode()],
        "hardware": "test-hw",
        "runtimes": ["onnxruntime"],
        "keepalive": 5,
        "download_stall_s": 1.0,
        "download_timeout_s": 30.0,
        "reconnect_min_s": 1.0,
        "reconnect_max_s": 2.0,
        "log_level": "warning",
        **over,
    }


def write_config(folder: Path, values: dict) -> Path:
    """``folder/agent.toml`` with ``values`` (a ``simulate`` dict becomes its table)."""
    folder.mkdir(parents=True, exist_ok=True)
    values = dict(values)
    simulate = values.pop("simulate", {})
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    lines += ["", "[simulate]", *(f"{k} = {json.dumps(v)}" for k, v in simulate.items())]
    path = folder / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_agent(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m edgeops_agent run --config config``; output appended to agent.log beside it."""
    log = open(config.parent / "agent.log", "ab")  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "edgeops_agent", "run", "--config", str(config)],
            stdout=log,
            stderr=log,
            env={**os.environ, **(env or {})},
        )
    finally:
        log.close()


def stop_agent(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM (a clean stop), SIGKILL if it does not end in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def state_json(state_dir: Path) -> dict | None:
    """``state.json`` as the agent last replaced it (None before its first write)."""
    try:
        return json.loads((state_dir / "state.json").read_bytes())
    except FileNotFoundError:
        return None


def serving(config: Path, models: dict[str, Model]) -> str:
    """The name (a key of ``models``) of the model this device serves from its state
    directory, checked by predicting with it as ``edgeops-agent predict`` would: the active
    slot must hash right, load in onnxruntime and give that model's outputs. Raises
    AssertionError when the device has no loadable model."""
    from edgeops_agent.config import load_config
    from edgeops_agent.errors import AgentError
    from edgeops_agent.local import load_predictor

    try:
        predictor = load_predictor(load_config(config))
    except AgentError as exc:
        raise AssertionError(f"no loadable model in {config.parent}: {exc}") from exc
    sha = predictor.model.manifest["artifact"]["sha256"]
    for name, model in models.items():
        if sha == model_sha(model):
            scores = [p["scores"] for p in predictor.predict_features(model.matrix)]
            np.testing.assert_allclose(scores, model.probabilities, atol=1e-5)
            return name
    raise AssertionError(f"{config.parent} serves an unknown model {sha[:12]}")


def model_sha(model: Model) -> str:
    import hashlib

    return hashlib.sha256(model.data).hexdigest()
